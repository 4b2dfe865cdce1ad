"""Speed of every stage, in clips/s: one script per stage (`bench_*.py`, each run on its own with its
own flags, ending with one JSON line) and the whole bench behind `xkd bench` (`benchmarks/suite/`),
which repeats the scripts' own measuring functions and writes one report. A package, installed with
xkd, so that the command finds it outside a checkout too."""
