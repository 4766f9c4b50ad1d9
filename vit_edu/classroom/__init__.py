"""The classroom: self-checks for the exercises, the grader, and the tooling that hands the course out.

* :mod:`.engine`: the check engine (an exercise is data: cases, a reference, named mistakes; ``probe`` runs
  the student's code and records, ``judge`` decides from the records alone).
* ``exercises_build`` / ``exercises_train`` / ``exercises_look``: the exercise tables, by notebook.
* :mod:`.grading`: ``python -m vit_edu grade``; it runs notebooks in :mod:`.sandbox` and judges outside it.
* :mod:`.assignments`: nbgrader metadata, student copies (``python -m vit_edu assignments``), the handout.

Students meet it through :mod:`vit_edu.checks` (``from vit_edu.checks import check_patchify``); the grader
calls :func:`vit_edu.checks.probe` in the student's process and :func:`vit_edu.checks.judge` in its own.
"""
