"""What the grader notices in a student's process, for the teacher to decide (the threat model: docs/classroom.md).

Three watches are set up in the sandboxed child after its imports and before the first answer cell:

* **the grader's own code** (:class:`Integrity`): the functions, classes and code objects of vit_edu, of the
  torch modules a probe uses and of ``builtins``, plus the exercise tables and the grader's constant data,
  kept by reference. Before and after each probe they are compared: an answer that replaced any of them (a
  probe that records the package's answer, a wrapped ``VisionTransformer.forward``, a patched
  ``torch.allclose``) could forge what the probe records, so that exercise is not graded and the reason is
  reported;
* **files outside the student's folder** (:func:`watch_files`): an audit hook (PEP 578: once added, code in
  the process cannot remove it) notes every file or folder opened, listed, written or linked outside the
  scratch copy, the Python installation and the system's read-only folders (not the import system's own
  look-ups in the sys.path entries, e.g. of a failed ``import seaborn``);
* **the package's own implementation** (:func:`package_calls`): while an exercise's probe runs, a profile
  function notes every call of the package's implementation of that exercise (``Exercise.package``), e.g. an
  answer ``patchify = vit_edu.patchify`` or a ``MultiHeadAttention`` that subclasses ``vit_edu.Attention``,
  and every function of the grader's own modules an answer calls (:func:`grader_functions`: the tables hold a
  right answer of every exercise), in the probe's thread and in threads started through ``threading``
  meanwhile (:func:`thread_starts`).

The watches report; only the first one withholds marks (its records could be forged). A student who sets out
to blind the later two from inside the process can (they live in the same memory): the report says so when the
profile function was removed, and the container remains the last line.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import sys
import threading
from contextlib import contextmanager
from typing import Any, Callable, Dict, FrozenSet, Iterator, List, Optional, Sequence, Set, Tuple

# The modules whose functions and classes a probe's record depends on (vit_edu's are added at snapshot time).
WATCHED_MODULES = ("builtins", "torch", "torch._C", "torch.nn.functional", "torch.nn.modules.module",
                   "torch.nn.init", "torch.random", "torch.autograd", "torch.overrides", "einops")
# The grader's own modules: their constant data (tables, patterns, messages) is compared too.
GRADER_PREFIXES = ("vit_edu.checks", "vit_edu.classroom.")
MUTABLE_BY_DESIGN = {"PASSED", "_GUARD_LOG"}  # state the checks themselves change while they run
SET_BY_TORCH = {"torch.Storage"}  # what torch's own setters reassign (set_default_dtype): no code a probe runs
MAX_NOTED = 20


def _resolve(dotted: str) -> Any:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def implementation_codes(names: Sequence[str]) -> Dict[Any, str]:
    """{code object: dotted name} for the functions and methods behind ``names``."""
    codes: Dict[Any, str] = {}
    for dotted in names:
        obj = _resolve(dotted)
        members = vars(obj).items() if isinstance(obj, type) else [("", obj)]
        for attr, member in members:
            member = getattr(member, "fget", member)  # a property's getter
            member = getattr(member, "__func__", member)  # staticmethod / classmethod
            code = getattr(member, "__code__", None)
            if code is not None:
                codes[code] = f"{dotted}.{attr}" if attr else dotted
    return codes


# ============================================================================================ the grader's code
def _is_code_like(x: Any) -> bool:
    return callable(x) or type(x).__name__ == "module"


def _is_data(x: Any) -> bool:
    return isinstance(x, (str, bytes, int, float, bool, tuple, list, dict, set, frozenset, type(None)))


_MISSING = object()


class Integrity:
    """A snapshot of the code the probes run, kept by reference (a replaced object cannot reuse an id): each
    entry is (where it lives: a module's or class's namespace, or the function for its ``__code__``, the
    attribute, the object, its name)."""

    def __init__(self) -> None:
        self.entries: List[Tuple[Any, str, Any, str]] = []
        self.data: List[Tuple[Any, str, str, str]] = []
        names = sorted(n for n in list(sys.modules) if n == "vit_edu" or n.startswith("vit_edu."))
        self.mutable = {id(v) for n in names for a, v in vars(sys.modules[n]).items()  # and their aliases
                        if a in MUTABLE_BY_DESIGN and isinstance(v, (dict, list, set))}
        compiled = sys.modules.get("torch._compile")
        self.torch_wrapper = compiled._disable_dynamo(len) if compiled is not None else None  # made before any answer
        for name in [*WATCHED_MODULES, *names]:
            module = sys.modules.get(name)
            if module is not None:
                self._module(name, module)

    def _module(self, name: str, module: Any) -> None:
        grader = name.startswith(GRADER_PREFIXES)
        space = vars(module)
        for attr, value in list(space.items()):
            where = f"{name}.{attr}"
            if attr.startswith("__") and attr != "__import__" or id(value) in self.mutable or where in SET_BY_TORCH:
                continue
            if _is_code_like(value):
                self._object(space, attr, value, where)
                if isinstance(value, type) and getattr(value, "__module__", None) == name and \
                        (name != "torch._C" or attr == "TensorBase"):  # torch._C: thousands of bindings
                    inner = vars(value)
                    for k, v in list(inner.items()):
                        if k not in ("__dict__", "__weakref__", "__doc__", "_abc_impl"):
                            self._object(inner, k, v, f"{where}.{k}")
            elif grader and (_is_data(value) or hasattr(value, "__dataclass_fields__")):
                self.data.append((space, attr, self._text(value), where))
                if isinstance(value, dict):  # EXERCISES, CHECKS: each exercise's fields
                    for k, ex in value.items():
                        if hasattr(ex, "__dataclass_fields__"):
                            self.data.append((value, k, self._text(ex), f"{where}[{k!r}]"))

    def _object(self, space: Any, attr: str, value: Any, where: str) -> None:
        self.entries.append((space, attr, value, where))
        if isinstance(value, type):
            return
        for part in ("__code__", "__defaults__", "__kwdefaults__", "__wrapped__", "__func__", "fget"):
            inner = getattr(value, part, None)
            if inner is not None:
                self.entries.append((value, part, inner, f"{where}.{part}"))
                code = getattr(inner, "__code__", None) if part in ("__func__", "fget") else None
                if code is not None:
                    self.entries.append((inner, "__code__", code, f"{where}.{part}.__code__"))

    @staticmethod
    def _text(value: Any) -> str:
        try:
            return repr(vars(value)) if hasattr(value, "__dataclass_fields__") else repr(value)
        except Exception:  # noqa: BLE001 - whatever it is, it is what it was
            return object.__repr__(value)

    @staticmethod
    def _get(space: Any, attr: str) -> Any:
        try:
            if isinstance(space, dict) or type(space).__name__ == "mappingproxy":
                return space.get(attr, _MISSING)
            return getattr(space, attr, _MISSING)
        except Exception:  # noqa: BLE001 - a student's object whose lookup fails: changed
            return _MISSING

    def changed(self, limit: int = 3) -> List[str]:
        """Names whose object (or constant data) is no longer the one of the snapshot."""
        out: List[str] = []
        get = self._get
        for space, attr, ref, where in self.entries:
            value = get(space, attr)
            if value is not ref and not self._wrapped_by_torch(value, ref) and not _tagged_by_dynamo(value, ref):
                out.append(where)
                if len(out) >= limit:
                    return out
        for space, attr, text, where in self.data:
            value = get(space, attr)
            if value is _MISSING or self._text(value) != text:
                out.append(where)
                if len(out) >= limit:
                    return out
        return out

    def _wrapped_by_torch(self, value: Any, ref: Any) -> bool:
        """torch._dynamo, once imported (by torch.compile, torch.use_deterministic_algorithms), wraps
        ``torch.manual_seed`` in torch's own ``_disable_dynamo``: the snapshot's function in torch's wrapper (its
        code, its module, around that very function) is no replacement."""
        made = self.torch_wrapper
        if made is None or type(value) is not type(made) or value.__code__ is not made.__code__ or \
                value.__globals__ is not made.__globals__:
            return False
        try:
            return dict(zip(value.__code__.co_freevars, value.__closure__ or ()))["fn"].cell_contents is ref
        except (KeyError, ValueError):  # a look-alike without torch's closure
            return False


DYNAMO_TAGGING = {"patched_init": "init", "patched_setstate": "setstate"}  # wrapper -> the variable it wraps


def _tagged_by_dynamo(value: Any, ref: Any) -> bool:
    """torch.compile (torch._dynamo's ``install_generation_tagging_init``) replaces ``nn.Module.__init__`` and
    ``__setstate__`` by wrappers that call the original and then tag the module: no replacement either, when the
    wrapper is torch's own (the code of torch's installed ``mutation_guard.py``, compiled here from that file, with
    that module's globals and the genuine ``GenerationTracker``) around that very function."""
    import types

    code = getattr(value, "__code__", None)
    guard = sys.modules.get("torch._dynamo.mutation_guard")
    torch = sys.modules.get("torch")
    if type(value) is not types.FunctionType or code is None or code.co_name not in DYNAMO_TAGGING or \
            guard is None or torch is None:
        return False
    path = os.path.join(os.path.dirname(os.path.realpath(torch.__file__)), "_dynamo", "mutation_guard.py")
    if code.co_filename != path or os.path.realpath(getattr(guard, "__file__", "")) != path or \
            value.__globals__ is not vars(guard):
        return False
    try:
        cells = dict(zip(code.co_freevars, value.__closure__ or ()))
        if code.co_freevars != (DYNAMO_TAGGING[code.co_name],) or cells[code.co_freevars[0]].cell_contents is not ref:
            return False
        genuine = _code_named(_compiled(path), code.co_name)
        tracker = vars(guard).get("GenerationTracker")  # an instance (torch 2.x) or a class of classmethods (older)
        tag = vars(tracker if isinstance(tracker, type) else type(tracker)).get("tag")
        tag = getattr(tag, "__func__", tag)
        return genuine is not None and _same_code(code, genuine) and type(tag) is types.FunctionType and \
            tag.__code__.co_filename == path and tag.__globals__ is vars(guard)
    except (OSError, SyntaxError, ValueError, KeyError, AttributeError, TypeError):
        return False


@functools.lru_cache(maxsize=4)
def _compiled(path: str) -> Any:
    with open(path, "rb") as f:  # read-only in the notebook's view: torch's installation
        return compile(f.read(), path, "exec")


def _code_named(code: Any, name: str) -> Any:
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            found = const if const.co_name == name else _code_named(const, name)
            if found is not None:
                return found
    return None


def _same_code(a: Any, b: Any) -> bool:
    return (a.co_code, a.co_names, a.co_varnames, a.co_freevars, a.co_consts) == \
        (b.co_code, b.co_names, b.co_varnames, b.co_freevars, b.co_consts)


# ============================================================================================ files
FILE_EVENTS = {"open": "opened", "os.listdir": "listed", "os.scandir": "listed", "glob.glob": "listed",
               "os.remove": "removed", "os.rmdir": "removed", "os.rename": "renamed", "os.mkdir": "made",
               "os.symlink": "linked", "os.link": "linked", "os.truncate": "truncated", "os.chmod": "chmod",
               "os.chown": "chown", "os.utime": "touched", "shutil.copyfile": "copied", "shutil.rmtree": "removed",
               "os.chdir": "entered"}
SYSTEM_ROOTS = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/etc", "/dev", "/proc", "/sys")


def _paths(event: str, args: Tuple[Any, ...]) -> List[Any]:
    if event in ("os.rename", "os.symlink", "os.link", "shutil.copyfile"):
        return list(args[:2])
    return list(args[:1])


def _import_scans() -> FrozenSet[Tuple[str, Any]]:
    """(event, code object) of the import system's own look-ups in a sys.path entry: a failed ``import seaborn``
    lists every entry (FileFinder), importlib.metadata and pkgutil list them too, zipimport opens a zip entry.
    Kept by code object: a function a student compiles or swaps in has another one."""
    scans: Set[Tuple[str, Any]] = set()
    wanted = [("os.listdir", "importlib._bootstrap_external", "FileFinder._fill_cache"),
              ("os.listdir", "importlib.metadata", "FastPath.children"),
              ("os.listdir", "pkgutil", "_iter_file_finder_modules"),
              ("open", "zipimport", "_read_directory"), ("open", "zipimport", "_get_data")]
    for event, module, dotted in wanted:
        try:
            obj: Any = importlib.import_module(module)
            for attr in dotted.split("."):
                obj = getattr(obj, attr)
            scans.add((event, obj.__code__))
        except (ImportError, AttributeError):  # another Python: that look-up is reported like any other
            continue
    return frozenset(scans)


def watch_files(allowed: Sequence[str], noted: List[str]) -> None:
    """Add the audit hook: every path an event names outside ``allowed`` (and the system folders) is appended
    to ``noted`` as 'opened /path' (at most MAX_NOTED distinct; the hook never raises). The import system's own
    look-ups in the sys.path entries of now (not ones the student adds later) are not the student's doing and
    are not noted; the same listing made by the student's code is."""
    roots = tuple(sorted({os.path.normpath(a) for a in allowed if a} | set(SYSTEM_ROOTS)))
    entries = {os.path.normpath(os.path.join(os.getcwd(), p)) for p in sys.path if isinstance(p, str)}
    scans = _import_scans()
    caller = sys._getframe
    seen: Set[str] = set()
    busy = [False]
    fspath, isabs, normpath, join, getcwd = os.fspath, os.path.isabs, os.path.normpath, os.path.join, os.getcwd

    def inside(path: str) -> bool:
        return any(path == r or path.startswith(r + "/") for r in roots)

    def by_import_system(event: str) -> bool:  # the code that raised the event (frame 2: this, the hook, it)
        try:
            return (event, caller(2).f_code) in scans
        except ValueError:  # no Python frame: not the import system
            return False

    def hook(event: str, args: Tuple[Any, ...]) -> None:
        verb = FILE_EVENTS.get(event)
        if verb is None or busy[0] or len(seen) >= MAX_NOTED:
            return
        busy[0] = True
        try:
            for raw in _paths(event, args):
                if raw is None or isinstance(raw, int):
                    continue
                path = fspath(raw)
                path = path.decode("utf-8", "backslashreplace") if isinstance(path, bytes) else path
                if path == "" or path in ("/dev/null",):
                    continue
                full = normpath(path if isabs(path) else join(getcwd(), path))
                if full in entries and by_import_system(event):
                    continue  # the import system looking for a module, e.g. a failed `import seaborn`
                if not inside(full) and full not in seen:
                    seen.add(full)
                    noted.append(f"{verb} {full}")
        except Exception:  # noqa: BLE001 - a watch must never change what the student's code does
            pass
        finally:
            busy[0] = False

    sys.addaudithook(hook)


# ============================================================================================ threads
Profile = Callable[[Any, str, Any], Any]
# taken at import, before any answer cell: replacing threading's functions does not switch the watch off
_set_thread_hook, _get_thread_hook = threading.setprofile, threading.getprofile


@contextmanager
def thread_starts(start: Profile) -> Iterator[Dict[str, bool]]:
    """While inside, every thread started through ``threading`` (concurrent.futures included) first runs
    ``start(frame, event, arg)`` in that thread: a profile function and a TorchFunctionMode hold for one thread
    only, and Python 3.11 reaches new threads only through threading's profile hook (it has no
    setprofile_all_threads). Watches nest: each new thread runs the outer one's start too. Yields
    {"unwatched": bool}: the hook was replaced meanwhile; it is then left as found, so an outer watch sees it."""
    previous = _get_thread_hook()
    state = {"unwatched": False}

    def hook(frame: Any, event: str, arg: Any) -> None:
        sys.setprofile(previous)  # this thread: no hook but what an outer watch's start sets
        if previous is not None:
            previous(frame, event, arg)
        try:
            start(frame, event, arg)
        except Exception:  # noqa: BLE001 - a watch must never change what the student's code does
            pass

    _set_thread_hook(hook)
    try:
        yield state
    finally:
        state["unwatched"] = _get_thread_hook() is not hook
        if not state["unwatched"]:
            _set_thread_hook(previous)


# ============================================================================================ package calls
class GraderCode(dict):
    """{code: dotted name} of the grader's functions an answer could call (:func:`grader_functions`), with
    ``frames``: which running code is the grader's own, taken before any answer cell (:func:`_by_grader`)."""

    frames: Tuple[FrozenSet[Any], FrozenSet[Any], FrozenSet[Any]] = (frozenset(), frozenset(), frozenset())


def _codes_in(code: Any, into: Set[Any]) -> None:
    """``code`` and every code object nested in it (its functions, lambdas, comprehensions), without recursion."""
    todo = [code]
    while todo:
        c = todo.pop()
        if c not in into:
            into.add(c)
            todo.extend(k for k in c.co_consts if type(k) is type(code))


def _unwrapped(value: Any) -> Any:
    for _ in range(20):  # a decorator's wrapper (contextmanager, torch.no_grad()) runs code shared with every other
        inner = getattr(value, "__wrapped__", None)
        if inner is None:
            break
        value = inner
    return value


# the code that runs a grader function decorated with @contextmanager, resumed by the with statement of its caller
_CONTEXTLIB = tuple(getattr(contextlib._GeneratorContextManager, n).__code__ for n in ("__enter__", "__exit__"))


def grader_functions(callers: Sequence[Any] = ()) -> GraderCode:
    """{code: dotted name} of the functions an answer could import from the grader's own modules (the exercise
    tables hold a right answer of every exercise: ``exercises_build.mha``, ``lin``, ...), by their own code (a
    decorated one's wrapper runs code shared with every function so decorated, the student's too). Its ``frames``:
    every code object of those modules (the grader's own callers), the ones that call the answer itself
    (``engine._call``, ``exercises_loop._train_probe``: a grader function handed over as the answer, e.g. through
    ``functools.partial``, is then the answer's) and the decorators' wrappers, which are looked through.
    ``callers``: more code objects that count as the grader's (a test that runs the probe itself)."""
    codes = GraderCode()
    trusted: Set[Any] = set(callers)
    wrappers: Set[Any] = set(_CONTEXTLIB)
    for name, module in list(sys.modules.items()):
        if not name.startswith(GRADER_PREFIXES):
            continue
        for attr, value in list(vars(module).items()):
            members = [(attr, value)]
            if isinstance(value, type) and value.__module__ == name:
                members += [(f"{attr}.{k}", getattr(v, "fget", getattr(v, "__func__", v)))
                            for k, v in vars(value).items()]
            for where, member in members:
                inner = _unwrapped(member)
                code = getattr(inner, "__code__", None)
                if code is None or type(code).__name__ != "code" or \
                        not str(getattr(inner, "__module__", None)).startswith(GRADER_PREFIXES):
                    continue  # an import (torch's, einops'): not the grader's own code
                _codes_in(code, trusted)
                outer = getattr(member, "__code__", None)
                if outer is not None and outer is not code:
                    wrappers.add(outer)
                if member is value and getattr(value, "__module__", None) == name:
                    codes[code] = f"{name}.{attr}"
    checks = sys.modules.get("vit_edu.checks")
    for ex in getattr(checks, "CHECKS", {}).values():  # the tables' lambdas: reference=lambda ctx, images, P: ...
        for field, value in vars(ex).items():
            code = getattr(_unwrapped(value), "__code__", None)
            if code is not None:
                codes.setdefault(code, f"vit_edu.checks.CHECKS[{ex.name!r}].{field}")
                _codes_in(code, trusted)
    answer_callers = set()
    for module, attr in (("vit_edu.classroom.engine", "_call"), ("vit_edu.classroom.exercises_loop", "_train_probe")):
        code = getattr(getattr(sys.modules.get(module), attr, None), "__code__", None)
        if code is not None:
            answer_callers.add(code)
    codes.frames = (frozenset(trusted - wrappers), frozenset(answer_callers), frozenset(wrappers - trusted))
    return codes


def _by_grader(frame: Any, called: Any, frames: Tuple[FrozenSet[Any], FrozenSet[Any], FrozenSet[Any]]) -> bool:
    """Whether ``frame`` (the caller of the grader's function ``called``, a code object) is the grader's own code,
    a decorator's wrapper looked through: by code object, so a wrapper compiled under a file name, a torch
    decorator or a thread is the answer's; so is a grader function handed over as the answer (through
    ``functools.partial``) to the code that calls the answer, unless that code calls it by its name."""
    trusted, answer_callers, wrappers = frames
    for _ in range(8):
        if frame is None or frame.f_code not in wrappers:
            break
        frame = frame.f_back
    if frame is None or frame.f_code not in trusted:
        return False
    return frame.f_code not in answer_callers or called.co_name in frame.f_code.co_names


def _from_answer(frame: Any) -> bool:
    """Whether ``frame`` runs code compiled from a notebook cell (or exec'd from one): "<...>", not a file."""
    name = frame.f_code.co_filename if frame is not None else ""
    return name.startswith("<") and not name.startswith("<frozen")


@contextmanager
def package_calls(codes: Dict[Any, str], grader: Optional[Dict[Any, str]] = None) -> Iterator[Dict[str, Any]]:
    """While inside: note which of ``codes`` start running, and which of the ``grader``'s functions
    (:func:`grader_functions`) an answer calls itself, in this thread and in the threads started meanwhile
    (yields {"calls": [...], "unwatched": bool}). Threads started before (a pool warmed in an answer cell) or
    through ``_thread`` directly are not watched."""
    grader = grader or {}
    frames = getattr(grader, "frames", None)  # a plain dict (a test's): only calls from an answer cell's code
    seen: Dict[str, None] = {}
    report: Dict[str, Any] = {"calls": [], "unwatched": False}
    if not codes and not grader:
        yield report
        return
    live = [True]

    def profile(frame: Any, event: str, arg: Any) -> None:
        if not live[0]:  # a thread started during the probe that outlives it: the watch leaves it
            sys.setprofile(None)
        elif event == "call":
            code = frame.f_code
            name = codes.get(code)
            if name is None and code in grader and (not _by_grader(frame.f_back, code, frames) if frames is not None
                                                    else _from_answer(frame.f_back)):
                name = grader[code]
            if name is not None:
                seen[name] = None

    def start(frame: Any, event: str, arg: Any) -> None:
        sys.setprofile(profile)
        profile(frame, event, arg)

    threads = {"unwatched": False}
    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        with thread_starts(start) as threads:
            yield report
    finally:
        mine = sys.getprofile() is profile
        sys.setprofile(previous)
        live[0] = False  # after this thread's own profile is off: it would remove itself
        report["unwatched"] = not mine or threads["unwatched"]
        report["calls"] = list(seen)
