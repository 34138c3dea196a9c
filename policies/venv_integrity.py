"""Is this virtualenv what requirements.lock installs, file for file? Recomputed on every call, never read from a stamp.

`verify_venv(prefix, lock, checkout)` answers with one line per problem (empty: intact). It checks
- the distributions in site-packages (their dist-info folders) against the lock's names and versions;
- every file a distribution's RECORD lists with a hash against that hash and size (PEP 376/627);
- that no importable code or start-up hook lies in site-packages unlisted (`.py`, `.so`, `.pth`, a sourceless `.pyc`,
  `sitecustomize`/`usercustomize`), nor is listed without a hash;
- the bytecode caches Python would load instead of a source (see `_check_bytecode`);
- `.pth` files: their path lines stay inside the venv (the project's own editable install may name exactly the
  checkout), their `import` lines come only from distributions the lock pins (or the project itself);
- the import path (the running interpreter's `sys.path` when it is this venv's, and `PYTHONPATH` always) stays inside
  the venv, the base interpreter's standard library and the checkout.

The venv policy (VENV003, VENV006-VENV008) and the places that start training use this same code. The module imports
only the standard library (and `policies.lockfile`, itself standard-library only), so that it can run where nothing
of the venv is trusted yet: `python -I -S policies/venv_integrity.py --prefix .venv --lock requirements.lock
--checkout .` runs it with no site-packages and no `.pth` processed, exit 1 and one line per problem when it fails.

No cache: every result is recomputed. A cache keyed on file times would live in a file the user can write, and a
user can set a file's mtime (and, by touching a file, move its ctime) at will. The full check of this project's
.venv (about 2 GiB, 80,000 files) costs a few seconds of hashing, spread over threads (hashlib releases the GIL).

What RECORD cannot prove: it is written by the installer inside the venv, so someone who edits a file and also
rewrites that file's RECORD line passes the hash check (the lock pins the wheels' hashes, not the installed
files'). `record_digest` condenses every RECORD into one digest that a signed record made where the venv was built
can carry, so that a rewritten RECORD is caught by comparing digests.
"""

from __future__ import annotations

import ast
import base64
import csv
import hashlib
import json
import os
import sys
import sysconfig
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from urllib.parse import unquote, urlparse

# Hash algorithms a RECORD may use (PEP 376 allows any hashlib name; md5 and sha1 prove nothing).
_STRONG_HASHES = frozenset({"sha256", "sha384", "sha512", "sha3_256", "sha3_384", "sha3_512", "blake2b", "blake2s"})
# What Python runs when it lies in site-packages (imports, extension modules, start-up hooks).
_CODE_SUFFIXES = (".py", ".pyw", ".pth", ".so", ".pyd", ".pyc")
_START_UP_HOOKS = ("sitecustomize.py", "usercustomize.py")
_HASH_THREADS = min(8, 2 * (os.cpu_count() or 1))


class Kind(Enum):
    """What a problem is about; the venv policy reports each kind under its own rule."""

    lock = "lock"  # distributions differ from the lock
    modified = "modified"  # a recorded file is missing or differs from its RECORD (or its RECORD is unreadable)
    unrecorded = "unrecorded"  # importable code no distribution installed
    path = "path"  # an import path entry or .pth line that leaves the venv


@dataclass(frozen=True)
class Problem:
    kind: Kind
    subject: str  # what the problem is about, stable across runs (a path relative to the venv, a path entry)
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass
class Distribution:
    name: str  # normalised
    version: str
    dist_info: Path
    editable_root: Path | None = None  # the folder an editable install points at (PEP 660 direct_url.json)
    hashed: dict[str, tuple[str, str, int | None]] = field(default_factory=dict)  # file → (algorithm, digest, size)
    unhashed: set[str] = field(default_factory=set)  # files listed without a hash (RECORD itself, bytecode caches)


def verify_venv(
    prefix: Path, lock: Path, checkout: Path, *, allow_unlocked: Iterable[str] = ("pip",), check_bytecode: bool = True
) -> list[str]:
    """One line per way the venv at `prefix` differs from what `lock` installs (plus the project at `checkout`,
    installed editable); empty when it is intact. The running interpreter's sys.path is checked when it runs from
    this venv; PYTHONPATH always."""
    from policies.lockfile import parse_lock

    try:
        entries = parse_lock(lock.read_text(encoding="utf-8")).entries
    except (OSError, UnicodeDecodeError) as exc:
        return [f"{lock}: cannot read the lock ({exc}); the venv cannot be verified against it"]
    locked = {name: (entry.version, entry.line) for name, entry in entries.items()}
    problems = check_installation(prefix, checkout, locked, allow_unlocked, _running_path(prefix), check_bytecode)
    return [problem.message for problem in problems]


def _running_path(prefix: Path) -> list[str]:
    """PYTHONPATH as the environment sets it (read even under `python -I`, which ignores it for itself but not for
    the processes it starts), and sys.path when this interpreter runs from the venv."""
    entries = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    return entries + (list(sys.path) if Path(sys.prefix).resolve() == prefix.resolve() else [])


def check_installation(
    prefix: Path,
    checkout: Path,
    locked: Mapping[str, tuple[str, int]],
    allow_unlocked: Iterable[str],
    import_path: Sequence[str],
    check_bytecode: bool = True,
    lock_name: str = "requirements.lock",
) -> list[Problem]:
    """Every problem of the venv at `prefix`: `locked` maps normalised names to (version, line in the lock)."""
    prefix, checkout = prefix.resolve(), checkout.resolve()
    problems: list[Problem] = []
    sites = site_packages(prefix)
    if not sites:
        return [Problem(Kind.modified, "site-packages", f"{prefix} has no lib/python*/site-packages: not a venv")]
    problems += _check_configuration(prefix)
    distributions: list[Distribution] = []
    for site in sites:
        found, unreadable = read_distributions(site, checkout)
        distributions += found
        problems += unreadable
    installed = {dist.name: dist.version for dist in distributions}
    allowed = {_normalise(name) for name in allow_unlocked} | _project_names(distributions, prefix, checkout)
    problems += [
        Problem(Kind.lock, subject, message)
        for _, message, subject in lock_mismatches(installed, locked, allowed, lock_name)
    ]
    for site in sites:
        in_site = [dist for dist in distributions if dist.dist_info.parent == site]
        problems += _check_records(site, prefix, in_site)
        problems += _check_unrecorded(site, prefix, in_site)
        problems += _check_pth(site, prefix, checkout, in_site, set(locked) | _project_names(in_site, prefix, checkout))
        if check_bytecode:
            problems += _check_bytecode(site, prefix)
    problems += check_import_path(import_path, prefix, checkout)
    return problems


def lock_mismatches(
    installed: Mapping[str, str], locked: Mapping[str, tuple[str, int]], allowed: set[str], lock_name: str
) -> list[tuple[int, str, str]]:
    """(line in the lock, message, matched text) for each distribution that differs from the lock."""
    found = []
    for name, (version, line) in locked.items():
        have = installed.get(name)
        if have is None:
            found.append((line, f"{name}=={version} is locked but not installed", f"{name} {have}"))
        elif have != version:
            found.append((line, f"{name} {have} is installed, {lock_name} pins {version}", f"{name} {have}"))
    for name, have in sorted(installed.items()):
        if name not in locked and name not in allowed:
            found.append((0, f"{name} {have} is installed but not in {lock_name}", f"extra {name}"))
    return found


def site_packages(prefix: Path) -> list[Path]:
    return sorted(path for path in (prefix / "lib").glob("python*/site-packages") if path.is_dir())


def _normalise(name: str) -> str:
    from policies.lockfile import normalise_name

    return normalise_name(name)


def _check_configuration(prefix: Path) -> list[Problem]:
    try:
        config = (prefix / "pyvenv.cfg").read_text(encoding="utf-8")
    except OSError as exc:
        return [Problem(Kind.path, "pyvenv.cfg", f"{prefix / 'pyvenv.cfg'}: unreadable ({exc}): not a venv")]
    for line in config.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "include-system-site-packages" and value.strip().lower() != "false":
            return [
                Problem(
                    Kind.path,
                    "include-system-site-packages",
                    f"{prefix / 'pyvenv.cfg'} includes the base interpreter's site-packages; rebuild the venv",
                )
            ]
    return []


def read_distributions(site: Path, checkout: Path) -> tuple[list[Distribution], list[Problem]]:
    """The distributions installed in `site` (their dist-info folders and RECORDs); an unreadable or malformed
    RECORD is a problem, never an empty one."""
    found: list[Distribution] = []
    problems: list[Problem] = []
    for dist_info in sorted(site.glob("*.dist-info")):
        name, _, version = dist_info.name.removesuffix(".dist-info").partition("-")
        where = dist_info.relative_to(site).as_posix()
        if not (name and version):
            problems.append(Problem(Kind.modified, where, f"{dist_info}: not a name-version.dist-info folder"))
            continue
        dist = Distribution(_normalise(name), version, dist_info, _editable_root(dist_info))
        try:
            with (dist_info / "RECORD").open(encoding="utf-8", newline="") as handle:
                rows = list(csv.reader(handle))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            problems.append(Problem(Kind.modified, where, f"{dist_info / 'RECORD'}: unreadable ({exc})"))
            continue
        for number, row in enumerate(rows, start=1):
            if not row:
                continue
            problem = _add_record_row(dist, site, row, f"{dist_info / 'RECORD'}:{number}")
            if problem:
                problems.append(Problem(Kind.modified, f"{where}/RECORD:{row[0]}", problem))
        found.append(dist)
    return found, problems


def _add_record_row(dist: Distribution, site: Path, row: list[str], where: str) -> str | None:
    if len(row) != 3:
        return f"{where}: a RECORD row has {len(row)} fields, not 3 (path,hash,size)"
    relative, hashed, size = row
    file = os.path.normpath(os.path.join(site, relative))
    if not hashed:
        dist.unhashed.add(file)
        return None
    algorithm, _, digest = hashed.partition("=")
    if algorithm not in _STRONG_HASHES or not digest:
        return (
            f"{where}: {relative} is recorded with {algorithm or 'no'} hash; only {', '.join(sorted(_STRONG_HASHES))} "
            "prove anything"
        )
    if size and not size.isdigit():
        return f"{where}: {relative} has the size {size!r}"
    dist.hashed[file] = (algorithm, digest, int(size) if size else None)
    return None


def _editable_root(dist_info: Path) -> Path | None:
    """The folder a PEP 660 editable install points at, from its direct_url.json (None: not editable)."""
    try:
        data = json.loads((dist_info / "direct_url.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not (data.get("dir_info") or {}).get("editable"):
        return None
    url = urlparse(str(data.get("url", "")))
    return Path(unquote(url.path)).resolve() if url.scheme == "file" else None


def project_roots(prefix: Path, checkout: Path) -> tuple[Path, Path]:
    """Where the project's own editable install may point: the checkout being judged, or the checkout that holds
    this venv (`make venv` installs the project editable from there; a checkout may link that venv as its .venv)."""
    return checkout, prefix.parent


def _project_names(distributions: Iterable[Distribution], prefix: Path, checkout: Path) -> set[str]:
    """The project's own editable install: exactly the distributions whose editable root is a project root."""
    return {dist.name for dist in distributions if dist.editable_root in project_roots(prefix, checkout)}


def _digest(path: str, algorithm: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            raw = hashlib.file_digest(handle, algorithm).digest()
    except OSError:
        return None
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _check_records(site: Path, prefix: Path, distributions: list[Distribution]) -> list[Problem]:
    """Every file a RECORD lists with a hash exists inside the venv with that size and hash (hashed on threads:
    hashlib releases the GIL while it digests)."""
    problems: list[Problem] = []
    to_hash: list[tuple[str, str, str, Distribution]] = []
    inside = os.path.join(str(prefix), "")  # RECORD paths are normalised: a lexical test, as Path.is_relative_to
    for dist in distributions:
        for file, (algorithm, digest, size) in dist.hashed.items():
            if not file.startswith(inside):
                problems.append(Problem(Kind.modified, file, f"{dist.dist_info}/RECORD lists {file}, outside {prefix}"))
                continue
            try:
                actual = os.stat(file).st_size
            except OSError:
                shown = _shown(file, prefix)
                missing = f"{shown} ({dist.name} {dist.version}) is missing; reinstall: make clean && make venv"
                problems.append(Problem(Kind.modified, shown, missing))
                continue
            if size is not None and actual != size:
                problems.append(_modified(_shown(file, prefix), dist, f"{actual} bytes, RECORD says {size}"))
            else:
                to_hash.append((file, algorithm, digest, dist))
    # in chunks: a future per file costs more than hashing most of the venv's 58,000 small files
    chunks = [to_hash[start : start + 256] for start in range(0, len(to_hash), 256)]
    with ThreadPoolExecutor(_HASH_THREADS) as pool:
        digests = [d for chunk in pool.map(lambda c: [_digest(item[0], item[1]) for item in c], chunks) for d in chunk]
        for (file, _, digest, dist), actual_digest in zip(to_hash, digests, strict=True):
            if actual_digest != digest:
                problems.append(_modified(_shown(file, prefix), dist, "its hash differs from RECORD"))
    return problems


def _modified(shown: str, dist: Distribution, why: str) -> Problem:
    return Problem(
        Kind.modified,
        shown,
        f"{shown} was changed after {dist.name} {dist.version} installed it ({why}); "
        "reinstall: make clean && make venv",
    )


def _shown(file: str, prefix: Path) -> str:
    try:
        return f"{prefix.name}/{Path(file).relative_to(prefix).as_posix()}"
    except ValueError:
        return file


def _check_unrecorded(site: Path, prefix: Path, distributions: list[Distribution]) -> list[Problem]:
    """Importable code or a start-up hook that no RECORD lists with a hash; a symlinked folder (whose files the walk
    would not see) is one too."""
    hashed = {file for dist in distributions for file in dist.hashed}
    problems = []
    for directory, subdirs, names in os.walk(site):
        for name in subdirs:
            if os.path.islink(os.path.join(directory, name)):
                shown = _shown(os.path.join(directory, name), prefix)
                target = os.path.realpath(os.path.join(directory, name))
                problems.append(Problem(Kind.unrecorded, shown, f"{shown} is a symlink to {target}; remove it"))
        in_cache = os.path.basename(directory) == "__pycache__"
        for name in names:
            file = os.path.join(directory, name)
            importable = name.endswith(_CODE_SUFFIXES) and not (in_cache and name.endswith(".pyc"))
            if (importable or name in _START_UP_HOOKS) and file not in hashed:
                shown = _shown(file, prefix)
                problems.append(
                    Problem(
                        Kind.unrecorded,
                        shown,
                        f"{shown} is importable code that no installed distribution's RECORD lists with a hash; "
                        "remove it, or install it from the lock",
                    )
                )
    return problems


def _check_pth(
    site: Path, prefix: Path, checkout: Path, distributions: list[Distribution], trusted: set[str]
) -> list[Problem]:
    """`.pth` files (site.py reads those at the top of site-packages): path lines stay in the venv, or name exactly the
    checkout for the project's own editable install; import lines come from distributions the lock pins. The
    editable finders setuptools writes (`__editable___*_finder.py`) map modules to folders under the same rule."""
    owner = {file: dist for dist in distributions for file in dist.hashed}
    problems: list[Problem] = []
    for pth in sorted(site.glob("*.pth")):
        dist = owner.get(os.path.normpath(pth))
        allowed_outside = (
            dist.editable_root if dist is not None and dist.editable_root in project_roots(prefix, checkout) else None
        )
        try:
            lines = pth.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(Kind.path, _shown(str(pth), prefix), f"{pth}: unreadable ({exc})"))
            continue
        for number, line in enumerate(lines, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            where = f"{_shown(str(pth), prefix)}:{number}"
            if text.startswith(("import ", "import\t")):
                if dist is None or dist.name not in trusted:
                    who = "no locked distribution" if dist is None else f"{dist.name}, which the lock does not pin,"
                    problems.append(
                        Problem(Kind.path, where, f"{where} runs code at start-up that {who} installed: {text[:80]}")
                    )
                continue
            problems += _path_outside(Path(site, text), where, prefix, allowed_outside)
    for finder in sorted(site.glob("__editable___*_finder.py")):
        dist = owner.get(os.path.normpath(finder))
        allowed_outside = (
            dist.editable_root if dist is not None and dist.editable_root in project_roots(prefix, checkout) else None
        )
        for target in _finder_mapping(finder):
            problems += _path_outside(Path(target), _shown(str(finder), prefix), prefix, allowed_outside)
    return problems


def _path_outside(path: Path, where: str, prefix: Path, editable_root: Path | None) -> list[Problem]:
    resolved = path.resolve()
    if resolved.is_relative_to(prefix) or (editable_root is not None and resolved.is_relative_to(editable_root)):
        return []
    return [Problem(Kind.path, where, f"{where} puts {resolved} on the import path, outside the venv {prefix}")]


def _finder_mapping(finder: Path) -> list[str]:
    """The folders an editable finder maps modules to (its literal MAPPING); unparsable → a path that fails."""
    try:
        tree = ast.parse(finder.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "MAPPING" for t in node.targets):
                mapping = ast.literal_eval(node.value)
                return [str(value) for value in mapping.values()]
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError, AttributeError):
        pass
    return [f"/<unreadable mapping in {finder}>"]


def check_import_path(entries: Sequence[str], prefix: Path, checkout: Path) -> list[Problem]:
    """Each entry of an import path lies inside the venv or the checkout, or is the base interpreter's standard
    library (its site-packages is not: a venv leaves it out)."""
    stdlib = {Path(sysconfig.get_path(key)).resolve() for key in ("stdlib", "platstdlib")}
    stdlib |= {folder / "lib-dynload" for folder in stdlib}
    version = f"{sys.version_info.major}{sys.version_info.minor}"
    stdlib |= {folder.parent / f"python{version}.zip" for folder in stdlib}
    problems = []
    for entry in entries:
        resolved = Path(entry or os.getcwd()).resolve()
        if resolved.is_relative_to(prefix) or resolved in stdlib:
            continue
        if any(resolved.is_relative_to(root) for root in project_roots(prefix, checkout)):
            continue
        problems.append(
            Problem(
                Kind.path,
                str(resolved),
                f"{resolved} is on the import path (sys.path or PYTHONPATH), outside the venv {prefix}, the "
                "standard library and the checkout; unset PYTHONPATH or run from the checkout",
            )
        )
    return problems


def _check_bytecode(site: Path, prefix: Path) -> list[Problem]:
    """Bytecode caches are generated when a distribution is installed and RECORDs list them without a hash, yet
    Python runs `__pycache__/m.<tag>.pyc` instead of `m.py` whenever its header matches the source (mtime and size,
    both of which a user sets at will, or an unchecked hash). So each cache Python would load for a source must be
    that source compiled: it is compiled again and compared, code object to code object, in worker processes
    (compiling holds the GIL; a malicious cache that crashes the unmarshaller then breaks a worker, which is a
    problem, not a pass). Caches for other interpreters, or stale ones Python would rewrite, are inert."""
    tag = sys.implementation.cache_tag
    pairs = []
    for cache in site.rglob("__pycache__"):
        for pyc in cache.glob(f"*.{tag}*.pyc"):
            module = pyc.name.split(".", 1)[0]
            source = cache.parent / f"{module}.py"
            if source.is_file():
                pairs.append((str(source), str(pyc)))
    problems = []
    chunks = [pairs[start : start + 512] for start in range(0, len(pairs), 512)]
    try:
        with ProcessPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
            for bad in pool.map(_stale_or_foreign, chunks):
                problems += [
                    Problem(
                        Kind.modified,
                        _shown(pyc, prefix),
                        f"{_shown(pyc, prefix)} is not {Path(source).name} compiled ({why}); Python would run it "
                        "instead of the source: delete it",
                    )
                    for source, pyc, why in bad
                ]
    except Exception as exc:  # a worker died (a crafted cache can crash marshal): fail closed
        problems.append(
            Problem(Kind.modified, "__pycache__", f"{site}: the bytecode caches could not be verified ({exc})")
        )
    return problems


def _stale_or_foreign(pairs: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """(source, cache, why) for each cache Python would load that is not its source compiled."""
    from policies.bytecode import forged  # here: run as a file, the package is set up after the module's imports

    found = [(source, pyc, forged(Path(pyc), Path(source))) for source, pyc in pairs]
    return [(source, pyc, why) for source, pyc, why in found if why is not None]


def record_digest(prefix: Path) -> str:
    """One sha256 over every (file, hash) every RECORD in the venv lists, in a location-independent form: what a
    signed record made where the venv was built can carry, so that a RECORD rewritten afterwards is found."""
    lines = []
    for site in site_packages(prefix.resolve()):
        for record in sorted(site.glob("*.dist-info/RECORD")):
            try:
                rows = list(csv.reader(record.read_text(encoding="utf-8").splitlines()))
            except (OSError, UnicodeDecodeError, csv.Error):
                rows = [["<unreadable>", str(record), ""]]
            lines += sorted(f"{record.parent.name}\0{row[0]}\0{row[1]}" for row in rows if len(row) == 3 and row[1])
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Verify a venv against requirements.lock (exit 1 on any problem)")
    parser.add_argument("--prefix", type=Path, required=True)
    parser.add_argument("--lock", type=Path, required=True)
    parser.add_argument("--checkout", type=Path, required=True)
    parser.add_argument(
        "--no-bytecode",
        action="store_true",
        help="skip the bytecode caches (for a run whose PYTHONPYCACHEPREFIX keeps Python from reading them)",
    )
    args = parser.parse_args(argv)
    problems = verify_venv(args.prefix, args.lock, args.checkout, check_bytecode=not args.no_bytecode)
    for line in problems:
        print(f"oracle: {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    # Run as a file (`python -I -S policies/venv_integrity.py`): import policies.lockfile without the package's
    # __init__, which loads every policy and their third-party dependencies from the venv under test.
    import types

    package = types.ModuleType("policies")
    package.__path__ = [str(Path(__file__).resolve().parent)]
    sys.modules.setdefault("policies", package)
    raise SystemExit(main())
