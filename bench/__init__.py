"""Benchmarks of lmcpipe: compute efficiency, compilation, pipeline overhead and memory.

``python -m bench`` runs every benchmark, writes ``bench/results.json`` and
prints a Markdown table; ``--smoke`` runs them at tiny sizes and ``--only``
selects some. Each module measures one figure and documents what it
measures and how:

* ``training``: FLOP/s of an SGD step against dense matmul;
* ``seeds``: many seeds with vmap or in sequence;
* ``barriers``: the interpolation curve against plain forward passes;
* ``alignment``: weight matching against width;
* ``pipeline``: Snakemake scheduling, start-up and compute of a study;
* ``memory``: peak resident memory against width.
"""
