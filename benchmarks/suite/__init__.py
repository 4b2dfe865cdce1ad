"""`xkd bench`: every stage measured in one run, through the functions of the per-stage scripts,
each figure repeated (median and spread), written as report.json, report.md and charts.

  settings.py   what to run: stages, device, preset, repeats, and the workload sizes
  figures.py    a figure's samples and their summary; a stage's result; `Unavailable`
  stages.py     the five stages (shards, pipeline, model, train, eval)
  run.py        the stages in turn, a failing one reported and the rest still run; provenance
  goals.py      the project's speed goals, judged on a GPU run
  output.py     report.json, report.md, the history file
  charts.py     the PNG charts
  compare.py    the change per figure between two reports"""
