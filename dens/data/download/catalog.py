"""The archive catalog (config/archives.yaml): :class:`Archive`, :func:`load_catalog`,
:func:`get_archive` and :func:`mirrored_url`; a stand-in catalog over it
(:func:`load_catalog_with`, :func:`check_stand_in`).

A stand-in catalog describes files that stand in for the owners' archives (the rehearsal's
generated ones, README "Rehearse the paper scale"): the same names, URLs, formats, datasets and
splits, their own checksums (always given) and frames. It never changes config/archives.yaml or
its checks; only a scale that declares ``catalog: stand_in`` accepts one (config ``catalog``).
"""

import difflib
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dens.config_files import find_root, read_yaml, validate
from dens.data.download.checksums import normalize_digest
from dens.data.download.content import Dimension
from dens.errors import ConfigError


@dataclass(frozen=True)
class Archive:
    """One entry of config/archives.yaml (see the field list at the top of that file)."""

    name: str
    url: str
    format: str
    algorithm: str | None
    digest: str | None
    checksum_source: str
    dataset: dict[str, tuple[str, ...]]
    md_split: bool = False
    optional: bool = False
    #: ``size.download`` as the catalog states it (e.g. ``193M``), or None when unknown.
    download_size: str | None = None
    #: ``size.extracted`` as the catalog states it (e.g. ``97G``), or None when unknown.
    extracted_size: str | None = None
    #: npz only: array name -> shape (lengths, or dimension names the arrays agree on).
    arrays: dict[str, tuple[Dimension, ...]] | None = None
    #: A model checkpoint the paper's authors published (format pt; config/published.yaml).
    published_checkpoint: bool = False

    @property
    def filename(self) -> str:
        """File name the archive is saved under (the last component of its URL)."""
        return PurePosixPath(urllib.parse.urlsplit(self.url).path).name


#: The catalog, relative to the repository root (schema: workflow/schemas/archives.schema.yaml).
CATALOG = "config/archives.yaml"


def load_catalog(
    path: str | os.PathLike[str] | None = None, root: str | os.PathLike[str] | None = None
) -> dict[str, Archive]:
    """Read and validate an archive catalog -> ``{name: Archive}`` in file order.

    ``path`` defaults to ``<root>/config/archives.yaml``; a relative ``path`` is read relative to
    the working directory. ``root`` (default :func:`dens.config_files.find_root`) is the repository
    root whose workflow/schemas/archives.schema.yaml the document is validated against. A missing
    or malformed file, or a schema violation, raises :class:`dens.errors.ConfigError` naming the
    file (relative to ``root`` when inside it), the key path and the offending value.
    """
    root = find_root() if root is None else Path(root)
    path = root / CATALOG if path is None else Path(path)
    try:
        source = str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        source = str(path)
    document = read_yaml(path)
    validate(document, "archives", source, root)
    catalog: dict[str, Archive] = {}
    for name, entry in document["archives"].items():
        algorithm = digest = None
        if (checksum := entry["checksum"]) is not None:  # the schema checked it: lower-case it
            algorithm = checksum["algorithm"]
            digest = normalize_digest(checksum["digest"], algorithm)
        catalog[name] = Archive(
            name=name,
            url=entry["url"],
            format=entry["format"],
            algorithm=algorithm,
            digest=digest,
            checksum_source=entry["checksum_source"],
            dataset={d: tuple(splits) for d, splits in entry.get("dataset", {}).items()},
            md_split=entry.get("md_split", False),
            optional=entry.get("optional", False),
            download_size=(entry["size"] or {}).get("download"),
            extracted_size=(entry["size"] or {}).get("extracted"),
            arrays=(
                {key: tuple(dims) for key, dims in entry["arrays"].items()}
                if "arrays" in entry
                else None
            ),
            published_checkpoint=entry.get("published_checkpoint", False),
        )
    return catalog


def load_catalog_with(
    stand_in: str | os.PathLike[str] | None, root: str | os.PathLike[str] | None = None
) -> dict[str, Archive]:
    """config/archives.yaml, with the entries of the ``stand_in`` catalog (a path; None: none)
    in place of the published entries of the same names, after :func:`check_stand_in`."""
    published = load_catalog(root=root)
    if stand_in is None:
        return published
    replacing = load_catalog(stand_in, root=root)
    check_stand_in(replacing, published, str(stand_in))
    return {**published, **replacing}


#: What a stand-in entry keeps of the published one it replaces.
STAND_IN_SAME = ("url", "format", "dataset", "md_split", "optional", "published_checkpoint")


def check_stand_in(
    stand_in: dict[str, Archive], published: dict[str, Archive], source: str
) -> None:
    """A stand-in catalog replaces only archives of config/archives.yaml, keeps their
    :data:`STAND_IN_SAME` fields and gives every file a checksum; else ConfigError naming the
    file, the archive and the field."""
    for name, archive in stand_in.items():
        if name not in published:
            raise ConfigError(
                f"{source}: archives.{name}: not an archive of {CATALOG}; a stand-in catalog "
                "only replaces archives of it"
            )
        for key in STAND_IN_SAME:
            ours, theirs = getattr(archive, key), getattr(published[name], key)
            if ours != theirs:
                raise ConfigError(
                    f"{source}: archives.{name}.{key}: {ours!r}: differs from {CATALOG} "
                    f"({theirs!r}); a stand-in keeps the published layout"
                )
        if archive.digest is None:
            raise ConfigError(
                f"{source}: archives.{name}.checksum: None: a stand-in file's checksum is known "
                "(it was generated), so it must be given"
            )


def get_archive(catalog: dict[str, Archive], name: str, source: str = CATALOG) -> Archive:
    """The archive called ``name``; an unknown name raises :class:`dens.errors.ConfigError`
    naming it, the catalog file ``source`` and the closest defined names."""
    if name in catalog:
        return catalog[name]
    close = difflib.get_close_matches(name, list(catalog), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"{source}: unknown archive {name!r}.{hint} "
        f"{len(catalog)} archives are defined there: {', '.join(catalog)}"
    )


def mirrored_url(url: str, mirror: str | None) -> str:
    """``url`` on the ``mirror``, an http(s) base URL that replaces its scheme and host (and
    prefixes its path with the mirror's own): ``https://dl.fbaipublicfiles.com/a/b.pt`` on
    ``http://127.0.0.1:8000/copy`` is ``http://127.0.0.1:8000/copy/a/b.pt``. None: ``url``."""
    if mirror is None:
        return url
    base = urllib.parse.urlsplit(mirror)
    if base.scheme not in ("http", "https") or not base.netloc or base.query or base.fragment:
        raise ConfigError(
            f"mirror {mirror!r}: not an http(s) base URL such as http://host:port/path"
        )
    parts = urllib.parse.urlsplit(url)
    path = base.path.rstrip("/") + parts.path
    return urllib.parse.urlunsplit((base.scheme, base.netloc, path, parts.query, ""))
