"""The grader's watches (vit_edu.classroom.watch) on their own; test_grading.py runs them in the sandbox."""

import subprocess
import sys
import textwrap

import torch

import vit_edu
from vit_edu.checks import CHECKS
from vit_edu.classroom import watch


def test_every_exercise_names_the_package_s_own_implementation():
    """Each exercise of the tables says which vit_edu code implements it (layer_norm: none in the package)."""
    for name, ex in CHECKS.items():
        assert bool(ex.package) == (name != "layer_norm"), name
        codes = watch.implementation_codes(ex.package)
        assert len(codes) >= len(ex.package), name  # every name resolves to code
    codes = watch.implementation_codes(CHECKS["multi_head_attention"].package)
    assert vit_edu.attention.Attention.forward.__code__ in codes
    # param_count: the model built on the meta device and its p.numel() summed is the judge's own reference
    assert vit_edu.VisionTransformer.__init__.__code__ in watch.implementation_codes(CHECKS["param_count"].package)


def test_integrity_sees_replaced_code_and_tables_and_nothing_else():
    snapshot = watch.Integrity()
    model = vit_edu.VisionTransformer(image_size=8, patch_size=4, dim=8, depth=1, heads=2, mlp_dim=8, num_classes=3)
    model(torch.randn(2, 3, 8, 8)).sum().backward()  # what a probe does changes nothing watched
    assert snapshot.changed() == []
    original = vit_edu.patch_embed.patchify
    import vit_edu.classroom.engine as engine
    code = engine.record_value.__code__
    try:
        vit_edu.patch_embed.patchify = lambda *a, **k: original(*a, **k)
        assert snapshot.changed() == ["vit_edu.patch_embed.patchify"]
        vit_edu.patch_embed.patchify = original
        engine.record_value.__code__ = (lambda x: x).__code__
        assert "vit_edu.classroom.engine.record_value.__code__" in snapshot.changed()
        engine.record_value.__code__ = code
        CHECKS["patchify"].atol = 1.0
        assert "vit_edu.checks.CHECKS['patchify']" in snapshot.changed(limit=10)
    finally:
        vit_edu.patch_embed.patchify = original
        engine.record_value.__code__ = code
        CHECKS["patchify"].atol = type(CHECKS["patchify"]).__dataclass_fields__["atol"].default
    assert snapshot.changed() == []


def test_package_calls_are_noted_and_a_removed_watch_is_said():
    codes = watch.implementation_codes(CHECKS["patchify"].package)
    images = torch.randn(1, 3, 8, 8)
    with watch.package_calls(codes) as report:
        vit_edu.patchify(images, 4)
    assert report == {"calls": ["vit_edu.patch_embed.patchify"], "unwatched": False}
    with watch.package_calls(codes) as report:
        images.reshape(1, 3, 2, 4, 2, 4)  # one's own code: nothing
    assert report == {"calls": [], "unwatched": False}
    with watch.package_calls(codes) as report:
        sys.setprofile(None)
        vit_edu.patchify(images, 4)
    assert report == {"calls": [], "unwatched": True}
    assert sys.getprofile() is None


def test_file_watch_notes_paths_outside_the_allowed_folders(tmp_path):
    """In a child process: an audit hook cannot be removed, so it is not added to the test's own process."""
    mine, other = tmp_path / "mine", tmp_path / "other"
    mine.mkdir()
    other.mkdir()
    (other / "secret.txt").write_text("x")
    script = textwrap.dedent(f"""
        import os, sys
        from vit_edu.classroom import watch
        noted = []
        watch.watch_files([{str(mine)!r}], noted)
        os.chdir({str(mine)!r})
        open("inside.txt", "w").close()
        open("/etc/hostname" if os.path.exists("/etc/hostname") else "/dev/null").close()
        open({str(other / "secret.txt")!r}).read()
        os.listdir({str(other)!r})
        open(b{str(other / "bytes.txt")!r}, "w").close()
        try:
            open("../other/missing.txt")
        except OSError:
            pass
        import json
        print(json.dumps(noted))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    import json

    assert json.loads(out) == [f"opened {other / 'secret.txt'}", f"listed {other}", f"opened {other / 'bytes.txt'}",
                               f"opened {other / 'missing.txt'}"]


def test_package_calls_follow_threads_started_during_the_probe():
    """A profile function holds for one thread: work handed to a pool or a thread is watched too, and the
    threads' hook is gone afterwards (a copy of the code object is pasting, a documented limit)."""
    import concurrent.futures
    import threading

    codes = watch.implementation_codes(CHECKS["patchify"].package)
    images = torch.randn(1, 3, 8, 8)
    with watch.package_calls(codes) as report:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(vit_edu.patch_embed.patchify, images, 4).result()
    assert report == {"calls": ["vit_edu.patch_embed.patchify"], "unwatched": False}
    with watch.package_calls(codes) as report:
        t = threading.Thread(target=vit_edu.patchify, args=(images, 4))
        t.start()
        t.join()
    assert report == {"calls": ["vit_edu.patch_embed.patchify"], "unwatched": False}
    assert threading.getprofile() is None and sys.getprofile() is None
    with watch.package_calls(codes) as report:
        threading.setprofile(None)  # switching the threads' watch off is said too
    assert report["unwatched"] is True


def test_forbidden_torch_functions_are_seen_as_aten_ops_and_in_threads():
    """F.layer_norm reached through torch.ops.aten (an overload's name is "layer_norm.default") or called in a
    thread fails the check like a direct call."""
    import threading

    import pytest
    import torch.nn.functional as F

    from vit_edu.checks import CheckError, check_layer_norm

    def through_aten(x, weight, bias, eps):
        return torch.ops.aten.layer_norm.default(x, [x.shape[-1]], weight, bias, eps)

    def in_a_thread(x, weight, bias, eps):
        out = []
        t = threading.Thread(target=lambda: out.append(F.layer_norm(x, (x.shape[-1],), weight, bias, eps)))
        t.start()
        t.join()
        return out[0]

    with pytest.raises(CheckError, match=r"calls torch\.ops\.aten\.layer_norm, which this exercise asks you"):
        check_layer_norm(through_aten)
    with pytest.raises(CheckError, match=r"calls F\.layer_norm, which this exercise asks you to build"):
        check_layer_norm(in_a_thread)
    assert threading.getprofile() is None
    assert not torch.overrides._is_torch_function_mode_enabled()


def test_file_watch_leaves_the_import_system_s_own_look_ups_alone(tmp_path):
    """A failed `import seaborn` makes the import system list every sys.path entry: not the student's doing.
    The same listing by the student's code, or by the import system in an entry the student added, is noted."""
    mine, entry, added = tmp_path / "mine", tmp_path / "entry", tmp_path / "added"
    for d in (mine, entry, added):
        d.mkdir()
    script = textwrap.dedent(f"""
        import importlib, json, os, sys
        sys.path.append({str(entry)!r})
        from vit_edu.classroom import watch
        noted = []
        watch.watch_files([{str(mine)!r}], noted)
        importlib.invalidate_caches()  # as in the grader's child, where the folders' contents changed
        for name in ("no_such_module_xyz", "another_missing_one"):
            try:
                importlib.import_module(name)
            except ImportError:
                pass
        sys.path.append({str(added)!r})
        try:
            import a_third_missing_one
        except ImportError:
            pass
        os.listdir({str(entry)!r})
        print(json.dumps(noted))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    import json

    assert json.loads(out) == [f"listed {added}", f"listed {entry}"]


def test_what_torch_and_the_checks_change_themselves_is_no_replaced_code():
    """An honest answer cell that runs its check (vit_edu.checks keeps the passes in an alias of judge.PASSED),
    sets torch's default dtype (torch reassigns torch.Storage) or imports torch._dynamo (through
    torch.use_deterministic_algorithms; it wraps torch.manual_seed) replaced nothing; a look-alike wrapper did."""
    script = textwrap.dedent("""
        import functools, json, sys, types
        sys.path.insert(0, "tests")
        import torch
        from vit_edu.checks import check_patchify
        from vit_edu.classroom import watch
        import exercise_solutions
        namespace = {}
        exec("import torch\\nfrom einops import rearrange\\n" + dict(exercise_solutions.EXERCISES)["patchify"], namespace)
        snapshot = watch.Integrity()
        check_patchify(namespace["patchify"])
        torch.set_default_dtype(torch.float64)
        torch.use_deterministic_algorithms(True)
        honest = snapshot.changed()
        seed = torch.manual_seed
        torch.manual_seed = functools.wraps(torch.random.manual_seed)(lambda s: None)
        wrapper = snapshot.changed()
        cells = tuple(types.CellType(lambda s: None) if n == "fn" else c  # torch's code around another function
                      for n, c in zip(seed.__code__.co_freevars, seed.__closure__))
        torch.manual_seed = types.FunctionType(seed.__code__, seed.__globals__, "manual_seed", None, cells)
        print(json.dumps([honest, wrapper, snapshot.changed(), seed.__wrapped__ is torch.random.manual_seed]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    import json

    assert json.loads(out.splitlines()[-1]) == [[], ["torch.manual_seed"], ["torch.manual_seed"], True]


def _answer(source: str, namespace: dict) -> None:
    """Run ``source`` as an answer cell runs in the grader: compiled from a "<...>" name, not from a file."""
    exec(compile(source, "<answer cell>", "exec"), namespace)  # noqa: S102 - the test's own code


def test_an_answer_that_calls_the_checks_own_right_answer_is_noted():
    """The exercise tables hold a right answer for every exercise (exercises_build.linear, lin, mha, ...): an
    answer that calls them is the package's implementation by another name. The probe's own use of the tables
    (cases, guards) is not the answer's, and an honest answer of every exercise is noted for nothing."""
    import math
    import sys as _sys

    import torch.nn.functional as F
    from einops import rearrange, reduce, repeat
    from torch import nn

    from vit_edu import checks

    _sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from exercise_solutions import EXERCISES

    grader = watch.grader_functions(callers=[sys._getframe().f_code])  # this test runs the probe as the child does
    assert {"vit_edu.classroom.exercises_build.mha", "vit_edu.classroom.exercises_look.mad",
            "vit_edu.checks.probe"} <= set(grader.values())
    for name, solution in EXERCISES:
        namespace = {"torch": torch, "nn": nn, "F": F, "math": math, "rearrange": rearrange, "reduce": reduce,
                     "repeat": repeat}
        _answer(solution, namespace)
        obj = namespace[checks.CHECKS[name].call.split("(")[0]]
        codes = watch.implementation_codes(checks.CHECKS[name].package)
        with watch.package_calls(codes, grader) as report:
            checks.probe(name, obj, 0)
        assert report == {"calls": [], "unwatched": False}, name

    namespace = {"torch": torch}
    _answer("from vit_edu.classroom import exercises_build as eb\n"
            "def project(x):\n"
            "    return eb.lin(x, (torch.eye(x.shape[-1]), None))\n", namespace)
    with watch.package_calls({}, grader) as report:
        namespace["project"](torch.randn(2, 3))
    assert report == {"calls": ["vit_edu.classroom.exercises_build.lin"], "unwatched": False}


def test_the_checks_own_right_answer_is_noted_however_it_is_reached_and_only_then():
    """Whose call it is goes by code object, not by file name: a wrapper compiled under a file name, a torch
    decorator, ``functools.partial`` handed over as the answer and a thread are the answer's; the student's own
    ``@contextmanager`` (whose wrapper code the grader's ``_vit_guard`` shares) is nobody's."""
    import functools
    import threading

    from vit_edu import checks

    grader = watch.grader_functions(callers=[sys._getframe().f_code])  # this test runs the probe as the child does
    ref = checks.CHECKS["patchify"].reference
    trampoline: dict = {"ref": ref}
    exec(compile("def patchify(images, P):\n    return ref(None, images, P)\n", "/usr/lib/python3/x.py", "exec"),
         trampoline)

    def in_thread(images: torch.Tensor, P: int) -> torch.Tensor:
        out: list = []
        t = threading.Thread(target=lambda: out.append(ref(None, images, P)))
        t.start()
        t.join()
        return out[0]

    forged = {"file name": trampoline["patchify"], "partial": functools.partial(ref, None),
              "torch decorator": functools.partial(torch.enable_grad()(ref), None), "thread": in_thread}
    for how, answer in forged.items():
        with watch.package_calls({}, grader) as report:
            checks.probe("patchify", answer, 0)
        assert report["calls"] == ["vit_edu.checks.CHECKS['patchify'].reference"], how

    namespace: dict = {}
    _answer("from contextlib import contextmanager\nfrom einops import rearrange\n"
            "@contextmanager\ndef timer():\n    yield\n"
            "def patchify(images, P):\n    with timer():\n"
            "        return rearrange(images, 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)', p1=P, p2=P)\n", namespace)
    with watch.package_calls({}, grader) as report:
        checks.probe("patchify", namespace["patchify"], 0)
    assert report == {"calls": [], "unwatched": False}
