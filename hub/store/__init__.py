"""Object stores: the interface and factory (base.py), one module per backend, the layout of
keys, the counting wrapper and ranged reads."""
