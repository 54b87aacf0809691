"""HTTP routes, one module per feature, combined in ``api.app``."""
