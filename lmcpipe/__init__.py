"""lmcpipe: linear mode connectivity studies of neural networks.

Each step of a study is one module: ``data``, ``models``, ``training``,
``neurons``, ``dimension``, ``permutation``, ``alignment``, ``barriers``,
``aggregate``, ``theory`` (width bounds) and ``convergence``. The ``lmcpipe`` command runs each step from the shell, and the
Snakemake workflow in ``workflow/`` chains them.
"""

__version__ = "0.1.0"
