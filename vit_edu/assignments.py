"""Moved to vit_edu.classroom.assignments (deprecated path, kept for one release)."""
from ._moved import alias_module; alias_module(__name__, "vit_edu.classroom.assignments")
