"""symjax: symmetries of neural networks and of their internal representations."""
