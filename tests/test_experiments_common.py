"""Pieces shared by the experiment scripts: pair selection and resumable records."""

import itertools
import json

from experiments import common


def test_seed_pairs_are_disjoint_first_and_balanced():
    seeds = list(range(16))
    pairs = common.seed_pairs(seeds, 32)
    assert len(pairs) == len(set(pairs)) == 32
    first = [s for p in pairs[:8] for s in p]
    assert sorted(first) == seeds  # the first 8 pairs use every seed once
    uses = [sum(s in p for p in pairs) for s in seeds]
    assert min(uses) == max(uses) == 4
    # Every pair, once, when asked for all of them; odd counts too.
    for n in (2, 3, 5, 6):
        items = list(range(10, 10 + n))
        got = common.seed_pairs(items, n * (n - 1) // 2 + 3)
        assert sorted(got) == list(itertools.combinations(items, 2))


def test_record_store_survives_a_line_cut_short(tmp_path):
    path = tmp_path / "results.jsonl"
    store = common.RecordStore(path, ["job"])
    store.add({"job": 1, "value": 0.5})
    with open(path, "a") as f:  # a kill in the middle of writing job 2
        f.write('{"job": 2, "val')
    store = common.RecordStore(path, ["job"])
    assert store.has({"job": 1}) and not store.has({"job": 2})
    store.add({"job": 2, "value": 0.25})
    store = common.RecordStore(path, ["job"])
    assert [r["job"] for r in store.records()] == [1, 2]
    assert json.loads(path.read_text().splitlines()[-1]) == {"job": 2, "value": 0.25}
