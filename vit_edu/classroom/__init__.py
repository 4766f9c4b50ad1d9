"""The classroom: self-checks for the exercises, the grader, and the tooling that hands the course out.

In layers:

* the exercise tables, by notebook: ``exercises_build`` (01-03), ``exercises_blocks`` (04, 05, 07 rollout),
  ``exercises_train`` (00, 02, 04), ``exercises_loop`` (06), ``exercises_look`` (07-09);
* :mod:`.engine`: the check engine (an exercise is data: cases, a reference, named mistakes; ``probe`` runs
  the student's code and records); :mod:`.judge`: ``judge`` decides from the records alone;
* :mod:`.grading`: ``python -m vit_edu grade``, scheduling and judging; :mod:`.reference` (what is graded) and
  :mod:`.report` (rows, CSV files, the table); it runs notebooks in :mod:`.sandbox` (the grader's side and the
  fork server), whose children run :mod:`.child` and lock themselves down with :mod:`.isolation`;
* :mod:`.assignments`: nbgrader metadata, student copies (``python -m vit_edu assignments``); :mod:`.handout`.

Students meet it through :mod:`vit_edu.checks` (``from vit_edu.checks import check_patchify``); the grader
calls :func:`vit_edu.checks.probe` in the student's process and :func:`vit_edu.checks.judge` in its own.
"""
