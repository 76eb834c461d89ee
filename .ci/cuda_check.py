"""The helpers of ``make cuda-check`` (see CMakeLists.txt), run with the Python that has torch.

    python .ci/cuda_check.py run [--build-dir DIR] [--jobs N] [--pypi PINS] [-- CMAKE_ARGS...]
        what ``make cuda-check`` runs: finds nvcc and cmake (installs the pinned PyPI packages
        into this Python's environment when either is missing), configures and builds the check
    python .ci/cuda_check.py config OUT.cmake --cuda-home DIR
        (CMake, configure time) setup.py's CUDA build of infer_fast._C as CMake variables
    python .ci/cuda_check.py ptxas-log NVCC ARGS...
        (CMake's compiler launcher for the .cu files) runs nvcc, keeps its ``ptxas -v`` lines in
        <object>.ptxas.log and passes every other line through
    python .ci/cuda_check.py symbols --nm NM --launchers FILE --namespace NS... -- OBJECTS...
        every launcher of FILE defined in every namespace NS, and no infer_fast symbol that an
        object uses left undefined by all of them
    python .ci/cuda_check.py registers --limit N --kernels REGEX -- OBJECTS...
        prints the registers per thread of every kernel (from the .ptxas.log beside each
        object) and fails when a kernel matching REGEX uses more than N

Every failure ends with one line that starts with "cuda-check: FAILED:" and names the problem.
"""
from __future__ import annotations

import argparse
import builtins
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, NoReturn, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]


def fail(message: str) -> NoReturn:
    sys.exit(f"cuda-check: FAILED: {message}")


# ---- config: setup.py's CUDA build --------------------------------------------------------

def setup_py_extension(cuda_home: str) -> Dict[str, object]:
    """The arguments setup.py passes to CUDAExtension, read by running setup.py itself (the one
    build path) with a CUDA torch and toolkit pretended, so that the check compiles the CUDA
    build on a CPU-only torch too: setup() and the extension classes only record their
    arguments, and setup.py's build record (infer_fast/_build_info.json) is not written."""
    import setuptools
    import torch
    from torch.utils import cpp_extension

    recorded: Dict[str, Dict[str, object]] = {}

    def recorder(kind):
        def make(name, sources, *args, **kwargs):
            recorded[kind] = dict(kwargs, name=name, sources=list(sources))
            return None
        return make

    def no_write_open(file, mode="r", *args, **kwargs):
        if any(m in mode for m in "wax+"):
            return io.StringIO()  # setup.py's build record: this is not a build
        return builtins.open(file, mode, *args, **kwargs)

    saved = (setuptools.setup, cpp_extension.CUDAExtension, cpp_extension.CppExtension,
             cpp_extension.CUDA_HOME, torch.version.cuda, os.environ.pop("INFER_FAST_NO_CUDA", None))
    setuptools.setup = lambda **kwargs: None
    cpp_extension.CUDAExtension, cpp_extension.CppExtension = recorder("cuda"), recorder("cpp")
    cpp_extension.CUDA_HOME = cuda_home
    torch.version.cuda = torch.version.cuda or "(cuda-check)"
    path = ROOT / "setup.py"
    try:
        code = compile(path.read_text(), str(path), "exec")
        exec(code, {"__name__": "__main__", "__file__": str(path), "open": no_write_open,
                    "print": lambda *a, **k: None})
    except BaseException as exc:  # SystemExit too: setup.py exits when torch is missing
        fail(f"could not read the CUDA build from setup.py ({type(exc).__name__}: {exc})")
    finally:
        (setuptools.setup, cpp_extension.CUDAExtension, cpp_extension.CppExtension,
         cpp_extension.CUDA_HOME, torch.version.cuda, no_cuda) = saved
        if no_cuda is not None:
            os.environ["INFER_FAST_NO_CUDA"] = no_cuda
    if "cuda" not in recorded:
        fail("setup.py made no CUDAExtension for a CUDA torch with a toolkit: nothing to check")
    return recorded["cuda"]


def cuda_build_flags(cuda_home: str) -> Dict[str, List[str]]:
    """Sources and flags of setup.py's CUDA build, as torch's BuildExtension compiles it."""
    from torch.utils import cpp_extension

    ext = setup_py_extension(cuda_home)
    sources = [str((ROOT / s).resolve()) for s in ext["sources"]]
    compile_args = ext.get("extra_compile_args") or {}
    nvcc = list(compile_args.get("nvcc", []))
    # BuildExtension adds the arch flags of TORCH_CUDA_ARCH_LIST unless setup.py gave some
    # (it gives -gencode for sm_90 when the variable is unset): the same call here.
    arch = cpp_extension._get_cuda_arch_flags(nvcc)
    defines = [f"{k}={v}" if v is not None else k for k, v in ext.get("define_macros") or []]
    # BuildExtension's own defines for every source of an extension named infer_fast._C
    defines += ["TORCH_API_INCLUDE_EXTENSION_H", f"TORCH_EXTENSION_NAME={str(ext['name']).rsplit('.', 1)[-1]}"]
    return {
        "HOST_SOURCES": [s for s in sources if not s.endswith(".cu")],
        "CUDA_SOURCES": [s for s in sources if s.endswith(".cu")],
        "DEFINES": defines,
        "INCLUDE_DIRS": [str((ROOT / d).resolve()) for d in ext.get("include_dirs") or []],
        "CXX_FLAGS": list(compile_args.get("cxx", [])),
        "NVCC_FLAGS": list(cpp_extension.COMMON_NVCC_FLAGS) + nvcc + arch,
        "ARCH_FLAGS": arch or [f for f in nvcc if "arch" in f],
        "TORCH_INCLUDE_DIRS": list(cpp_extension.include_paths()),
        "PYTHON_INCLUDE_DIR": [sysconfig.get_paths()["include"]],
    }


def cmake_list(values: List[str]) -> str:
    """A quoted CMake list (semicolons inside a value escaped)."""
    return '"' + ";".join(v.replace("\\", "/").replace('"', '\\"').replace(";", "\\;") for v in values) + '"'


def cmd_config(args) -> None:
    flags = cuda_build_flags(args.cuda_home)
    if not flags["CUDA_SOURCES"]:
        fail("setup.py's CUDA build has no .cu source")
    lines = ["# Written by .ci/cuda_check.py config from setup.py: do not edit."]
    lines += [f"set(SETUP_{k} {cmake_list(v)})" for k, v in flags.items()]
    Path(args.out).write_text("\n".join(lines) + "\n")


# ---- ptxas-log: nvcc with ptxas -v, its report kept beside the object ------------------------

PTXAS_LINE = re.compile(r"^ptxas info\s*:|^\s+\d+ bytes stack frame")


def cmd_ptxas_log(command: List[str]) -> int:
    try:
        obj = command[command.index("-o") + 1]
    except (ValueError, IndexError):
        fail(f"ptxas-log: no -o OBJECT in the compile command {shlex.join(command)}")
    proc = subprocess.run(command, stderr=subprocess.PIPE, text=True)
    lines = proc.stderr.splitlines()
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        return proc.returncode
    # -Xptxas -v prints a few lines per kernel: kept for the register check, summarized there
    for line in lines:
        if not PTXAS_LINE.match(line):
            print(line, file=sys.stderr)
    Path(obj + ".ptxas.log").write_text("\n".join(line for line in lines if PTXAS_LINE.match(line)) + "\n")
    return 0


# ---- symbols: every declared launcher defined --------------------------------------------

def declared_launchers(path: Path) -> List[str]:
    """Names of the functions declared in launchers.inc (comments stripped)."""
    text = re.sub(r"//[^\n]*|/\*.*?\*/", "", path.read_text(), flags=re.S)
    names = []
    for statement in text.split(";"):
        match = re.search(r"\b([A-Za-z_]\w*)\s*\(", statement)
        if match:
            names.append(match.group(1))
    return names


NM_LINE = re.compile(r"^\s*[0-9a-fA-F]*\s+([A-Za-z?-])\s+(.+)$")


def nm_symbols(nm: str, obj: str) -> Tuple[set, set]:
    """(defined global symbols, undefined symbols) of an object, demangled."""
    proc = subprocess.run([nm, "-C", obj], capture_output=True, text=True)
    if proc.returncode != 0:
        fail(f"{nm} -C {obj} failed: {proc.stderr.strip()}")
    defined, undefined = set(), set()
    for line in proc.stdout.splitlines():
        match = NM_LINE.match(line)
        if not match:
            continue
        kind, name = match.groups()
        if kind == "U":
            undefined.add(name)
        elif kind.isupper() or kind == "u":  # lower case: local to the object (or weak undefined)
            defined.add(name)
    return defined, undefined


def cmd_symbols(args) -> None:
    names = declared_launchers(Path(args.launchers))
    if not names:
        fail(f"no launcher declaration found in {args.launchers}")
    defined: set = set()
    users: Dict[str, List[str]] = defaultdict(list)
    for obj in args.objects:
        d, u = nm_symbols(args.nm, obj)
        defined |= d
        for name in u:
            users[name].append(Path(obj).name)
    problems = []
    for ns in args.namespace:
        for name in names:
            if not any(sym.startswith(f"{ns}::{name}(") for sym in defined):
                problems.append(f"{ns}::{name} is declared in {Path(args.launchers).name} but defined in no object")
    for name in sorted(u for u in users if "infer_fast" in u and u not in defined):
        problems.append(f"{name} is used by {', '.join(sorted(users[name]))} but defined in no object")
    for p in problems:
        print(f"cuda-check: {p}")
    if problems:
        fail(f"{len(problems)} declared function(s) defined in no object of the CUDA build (listed above)")
    print(f"cuda-check: the {len(names)} launchers of {Path(args.launchers).name} are defined in "
          f"{' and '.join(args.namespace)}, and every infer_fast symbol the {len(args.objects)} objects use is defined")


# ---- registers: ptxas -v's counts, and the limit -----------------------------------------

def ptxas_entries(log: Path) -> List[Dict[str, object]]:
    """(mangled name, arch, registers, spill bytes) of each kernel in a ptxas -v report."""
    entries, current = [], None
    for line in log.read_text().splitlines():
        m = re.search(r"Compiling entry function '([^']+)' for '(\w+)'", line)
        if m:
            current = {"mangled": m.group(1), "arch": m.group(2), "spill": 0}
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and current is not None:
            current["spill"] = int(m.group(1)) + int(m.group(2))
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m and current is not None:
            current["registers"] = int(m.group(1))
            entries.append(current)
            current = None
    return entries


def demangle(names: List[str]) -> List[str]:
    """Demangled names (c++filt, one call), without the parameter list and the namespaces."""
    cxxfilt = shutil.which("c++filt")
    out = names
    if cxxfilt and names:
        proc = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True)
        if proc.returncode == 0 and len(proc.stdout.splitlines()) == len(names):
            out = proc.stdout.splitlines()
    short = []
    for name in out:
        name = name.replace("(anonymous namespace)::", "").replace("infer_fast::cuda::", "")
        name = re.sub(r"^void ", "", name)
        depth, end = 0, len(name)
        for i, ch in enumerate(name):  # the parameter list starts at the first '(' outside <>
            depth += ch == "<"
            depth -= ch == ">"
            if ch == "(" and depth == 0:
                end = i
                break
        short.append(name[:end])
    return short


def cmd_registers(args) -> None:
    logs = [Path(obj + ".ptxas.log") for obj in args.objects if obj.endswith(".cu.o")]
    missing = [str(p) for p in logs if not p.is_file()]
    if not logs or missing:
        fail(f"no ptxas -v report for {', '.join(missing) or 'any .cu object'} (is the CUDA launcher set?)")
    pattern = re.compile(args.kernels)
    checked = []
    print("cuda-check: ptxas -v, registers per thread, per kernel template:")
    for log in logs:
        entries = ptxas_entries(log)
        if not entries:
            fail(f"{log.name} lists no kernel: was the object compiled with -Xptxas -v?")
        for entry, name in zip(entries, demangle([e["mangled"] for e in entries])):
            entry["name"] = name
        by_template: Dict[Tuple[str, str], List[Dict]] = defaultdict(list)
        for entry in entries:
            by_template[(entry["name"].split("<")[0], entry["arch"])].append(entry)
        print(f"  {log.name[:-len('.o.ptxas.log')]}:")
        for (template, arch), group in sorted(by_template.items()):
            regs = [e["registers"] for e in group]
            spill = max(e["spill"] for e in group)
            print(f"    {template:<28} {arch}  {min(regs):>3}-{max(regs):<3} registers over "
                  f"{len(group):>2} instantiations" + (f"  (spills up to {spill} bytes)" if spill else ""))
        checked += [e for e in entries if pattern.search(e["name"])]
    if not checked:
        fail(f"no kernel matches {args.kernels!r}: renamed? (the register check would check nothing)")
    print(f"cuda-check: kernels matching {args.kernels!r}, at most {args.limit} registers each:")
    over = [e for e in checked if e["registers"] > args.limit]
    for e in sorted(checked, key=lambda e: (e["arch"], e["name"])):
        flag = "  OVER THE LIMIT" if e["registers"] > args.limit else ""
        spill = f" ({e['spill']} bytes spilled)" if e["spill"] else ""
        print(f"  {e['registers']:>4} {e['arch']}  {e['name']}{spill}{flag}")
    if over:
        worst = max(over, key=lambda e: e["registers"])
        fail(f"{len(over)} of {len(checked)} kernels matching {args.kernels!r} use more than {args.limit} "
             f"registers (worst: {worst['name']}, {worst['registers']})")


# ---- run: the whole check, compilers installed when missing -------------------------------

def pypi_tool(name: str) -> Optional[Path]:
    """Where the PyPI package of `name` (nvcc or cmake) puts it in this environment."""
    if name == "cmake":
        path = Path(sysconfig.get_paths()["scripts"]) / "cmake"
    else:  # nvidia-cuda-nvcc (CUDA 13): <site-packages>/nvidia/cu13/bin/nvcc
        path = Path(sysconfig.get_paths()["platlib"]) / "nvidia" / "cu13" / "bin" / "nvcc"
    return path if path.is_file() else None


def complete_pypi_nvcc(nvcc: Path) -> None:
    """The wheels put the libraries in nvidia/cu13/lib, where their nvcc.profile looks in lib64
    (CMake's compiler check links libcudart_static.a from there): the link a toolkit has."""
    lib64 = nvcc.parents[1] / "lib64"
    if not lib64.exists():
        lib64.symlink_to("lib")


def find_tools(pins: List[str]) -> Tuple[str, str]:
    """(nvcc, cmake): from PATH, else from this environment, else installed here from PyPI."""
    tools = {name: shutil.which(name) or pypi_tool(name) for name in ("nvcc", "cmake")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        wanted = [p for p in pins if ("cmake" in missing and p.startswith("cmake=="))
                  or ("nvcc" in missing and not p.startswith("cmake=="))]
        if not wanted:
            fail(f"{' and '.join(missing)} not found, and no pinned PyPI package to install (--pypi): "
                 "put CUDA 13's nvcc and cmake on PATH, or run `make cuda-check`")
        print(f"cuda-check: {' and '.join(missing)} not found: installing {' '.join(wanted)} from PyPI "
              f"into {sys.prefix}", flush=True)
        began = time.time()
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *wanted])
        if proc.returncode != 0:
            fail(f"{' and '.join(missing)} not found and pip could not install {' '.join(wanted)}: "
                 "put CUDA 13's nvcc and cmake on PATH, or let pip reach PyPI")
        tools = {name: path or pypi_tool(name) for name, path in tools.items()}
        still = [name for name, path in tools.items() if path is None]
        if still:
            fail(f"installed {' '.join(wanted)} but found no {' or '.join(still)} in {sys.prefix}")
        print(f"cuda-check: installed in {time.time() - began:.0f} s", flush=True)
    if Path(tools["nvcc"]) == pypi_tool("nvcc"):
        complete_pypi_nvcc(tools["nvcc"])
    return str(tools["nvcc"]), str(tools["cmake"])


def cmd_run(args) -> None:
    began = time.time()
    nvcc, cmake = find_tools(args.pypi.split())
    print(f"cuda-check: nvcc {nvcc}, cmake {cmake}", flush=True)
    build = Path(args.build_dir)
    configure = [cmake, "-S", str(ROOT), "-B", str(build), f"-DPython_EXECUTABLE={sys.executable}",
                 f"-DCMAKE_CUDA_COMPILER={nvcc}", *args.cmake_args]
    if subprocess.run(configure, stdout=subprocess.DEVNULL).returncode != 0:
        fail(f"cmake could not configure {build} (its error is above)")
    # (the outer make's flags and jobserver stay out: -j is ours, the output without make's -w)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    proc = subprocess.Popen([cmake, "--build", str(build), "-j", str(args.jobs)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    failures = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        if line.startswith("cuda-check: FAILED:"):
            failures.append(line.strip()[len("cuda-check: FAILED: "):])
    if proc.wait() != 0:
        # the last line names the problem: a check's own line, else the compile error above
        fail("; ".join(failures) or "a source of setup.py's CUDA build does not compile (the error is above)")
    print(f"cuda-check: passed in {time.time() - began:.0f} s: every source setup.py compiles for a CUDA "
          "build compiles with its flags, the launchers are defined, the register limit holds")


def main(argv: List[str]) -> int:
    if argv[:1] == ["ptxas-log"]:  # a compiler launcher: everything after it is the command
        return cmd_ptxas_log(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("--build-dir", default=str(ROOT / "build" / "cuda-check"))
    p.add_argument("--jobs", type=int, default=int(os.environ.get("MAX_JOBS") or 2))
    p.add_argument("--pypi", default="", help="pinned packages that provide nvcc and cmake (space-separated)")
    p.add_argument("cmake_args", nargs="*", help="more -D options for cmake")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("config")
    p.add_argument("out")
    p.add_argument("--cuda-home", required=True)
    p.set_defaults(func=cmd_config)
    p = sub.add_parser("symbols")
    p.add_argument("--nm", required=True)
    p.add_argument("--launchers", required=True)
    p.add_argument("--namespace", nargs="+", required=True)
    p.add_argument("objects", nargs="+")
    p.set_defaults(func=cmd_symbols)
    p = sub.add_parser("registers")
    p.add_argument("--limit", type=int, required=True)
    p.add_argument("--kernels", required=True, help="regex on the demangled kernel names to hold to the limit")
    p.add_argument("objects", nargs="+")
    p.set_defaults(func=cmd_registers)
    args = parser.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
