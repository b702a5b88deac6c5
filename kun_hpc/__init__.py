"""kun-hpc: the Kun method (instruction back-translation + answer polishment) at corpus scale on Slurm."""

__version__ = "0.1.0"
