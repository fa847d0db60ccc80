"""Neural-network building blocks and multi-task architectures (a leaf: imports no algorithm).

    layers.py    shared layers and initialisers
    registry.py  NetworkConfig, make_network: network.arch -> module
    mtmlp.py moore.py paco.py care.py softmod.py masks.py   one file per architecture family
    rules.py     what an architecture adds to every learner's gradient step
"""
