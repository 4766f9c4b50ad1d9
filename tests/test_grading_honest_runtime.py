"""Honest students who use the runtime the way notebooks do: a process pool given a function of the notebook,
``torch.save`` of a whole model whose class the notebook defines, ``getpass.getuser()``, ``torch.compile``. In Jupyter
these work (the kernel's namespace is ``sys.modules["__main__"]``; the user has a name); graded, they must too, with
full points and no flag."""

from __future__ import annotations

import json
import types

import pytest

from vit_edu.classroom import grading, watch
from test_grading_honest import REFERENCE, _honest

NOTEBOOK = "01_patch_embedding.ipynb"
HELPER = ("def _pf(x, p):\n    return x.unfold(2, p, p).unfold(3, p, p).flatten(2, 3).permute(0, 2, 3, 4, 1)"
          ".flatten(2)\n")
BEFORE_THE_ANSWER = {  # runs before the answer is defined: an error there costs the exercise
    "process_pool": "import multiprocessing as mp\nimport concurrent.futures as cf\n\ndef _square(x):\n"
                    "    return x * x\n\nwith mp.Pool(2) as pool:\n    assert pool.map(_square, range(4)) == [0, 1, 4, 9]\n"
                    "with cf.ProcessPoolExecutor(max_workers=2) as ex:\n"
                    "    assert list(ex.map(_square, range(3))) == [0, 1, 4]\n",
    "whole_model_saved": "class Tiny(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                         "        self.lin = nn.Linear(3, 2)\n\ntorch.save(Tiny(), 'whole.pt')\n"
                         "print(torch.load('whole.pt', weights_only=False))\n",
    "user_name": "import getpass\nprint(getpass.getuser())\n",
    "compiled_helper": "helper = torch.compile(_pf, backend='eager')\nprint(helper(torch.randn(1, 3, 8, 8), 4).shape)\n",
}


def _before(code: str):
    return lambda source: HELPER + code + "\n" + source if source.startswith("def patchify") else source


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    subs = tmp_path_factory.mktemp("runtime") / "submissions"
    for student, code in BEFORE_THE_ANSWER.items():
        (subs / student).mkdir(parents=True)
        (subs / student / NOTEBOOK).write_text(json.dumps(_honest(NOTEBOOK, _before(code)), indent=1))
    rows = grading.grade(subs, subs.parent / "out" / "grades.csv", reference_dir=REFERENCE, timeout=60, jobs=2,
                         seed=7, verbose=False)
    return [r for r in rows if r["notebook"] == NOTEBOOK]


@pytest.mark.parametrize("student", sorted(BEFORE_THE_ANSWER))
def test_the_runtime_a_notebook_has_in_jupyter_costs_nothing(graded, student):
    rows = [r for r in graded if r["student"] == student]
    assert len(rows) == 2
    assert [(r["exercise"], r["message"], r["flags"]) for r in rows if r["points"] != r["max_points"] or r["flags"]] \
        == []


def test_torch_compiles_module_tagging_is_no_replacement_but_a_look_alike_is():
    pytest.importorskip("torch._dynamo.mutation_guard")
    from torch import nn
    from torch._dynamo import mutation_guard

    module = vars(nn.Module)
    original = {name: module[name] for name in ("__init__", "__setstate__")}
    was_tagged = hasattr(nn.Module, "___has_generation_tag_patch")
    integrity = watch.Integrity()
    try:
        mutation_guard.install_generation_tagging_init()
        assert integrity.changed() == []
        tagged = nn.Module.__init__
        init = original["__init__"]

        def patched_init(self, *args, **kwargs):  # the same name and variable, the student's code
            init(self, *args, **kwargs)

        nn.Module.__init__ = patched_init
        assert integrity.changed() == ["torch.nn.modules.module.Module.__init__"]
        nn.Module.__init__ = types.FunctionType(tagged.__code__, dict(vars(mutation_guard)), "patched_init", None,
                                                tagged.__closure__)  # torch's code with other globals
        assert integrity.changed() == ["torch.nn.modules.module.Module.__init__"]
    finally:
        for name, value in original.items():
            setattr(nn.Module, name, value)
        if not was_tagged and hasattr(nn.Module, "___has_generation_tag_patch"):
            delattr(nn.Module, "___has_generation_tag_patch")
