"""The classroom machinery: the check engine (:mod:`.engine`) and the exercises it runs (``exercises_*``).

Students meet it through :mod:`vit_edu.checks`; the grader calls :func:`vit_edu.checks.probe` in the
student's process and :func:`vit_edu.checks.judge` in its own.
"""
