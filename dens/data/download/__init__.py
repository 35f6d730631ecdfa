"""Download, verify and extract the paper-scale dataset archives (config/archives.yaml).

Data flow (README.md): download -> verify (checksum) -> extract -> LMDB. This package covers the
first three steps and nothing else, one concern a module (import each name from the module that
defines it; nothing is re-exported here): it never executes or imports anything it fetched, and
unpickles nothing but a torch checkpoint's header through torch's weights-only unpickler (which
admits tensors and plain containers only; :func:`content_problem`).
It is a library: the command line is ``dens data download NAME --out FILE`` and
``dens data extract NAME --archive-path FILE --out DIR`` (dens/pipeline/cli.py), which Snakemake's
data rules run.

- :func:`load_catalog` reads config/archives.yaml, validates it against
  workflow/schemas/archives.schema.yaml (a violation raises :class:`dens.errors.ConfigError`
  naming the file, the key path and the value) and returns ``{name: Archive}``;
  :func:`get_archive` looks one up, suggesting close names for an unknown one.

- :func:`download` streams a URL to ``<dest>.part``, resumes an interrupted transfer with an
  HTTP ``Range`` request when the server honours it (and restarts from byte 0 when it does not),
  retries transient failures with exponential backoff, hashes while it writes, and renames the
  part file to ``dest`` only once the digest matches. An existing ``dest`` that verifies is not
  fetched again. Only http(s) is fetched, on every redirect hop: a redirect elsewhere (ftp://,
  file://, data:) is refused. :func:`download_archive` downloads a catalog entry.
- :func:`verify` hashes a file; on a mismatch it moves the file aside to ``<file>.corrupt`` and
  raises :class:`ChecksumMismatchError` naming the file and both digests. With no published
  checksum it warns loudly (:class:`UnverifiedDownloadWarning`) and checks the file against the
  digest recorded the first time it was seen (``<file>.<algorithm>``, trust on first use); a
  later download of such a file (after the copy was deleted or found changed) must give the
  recorded digest again, so a file changed at its source is refused, not pinned anew.
- Before such a first digest is recorded, :func:`content_problem` checks what a checksum cannot:
  the size the catalog states (:func:`size_range`) and the format, read to its end (an npz: a zip
  of ``.npy`` arrays holding the catalog's arrays with consistent shapes; a tar/zip: a listing
  readable to the end; a pt: a zip-format torch checkpoint whose members pass their CRC and
  that ``torch.load(weights_only=True)`` reads, holding ``state_dict`` and ``config``). An
  HTML page, a truncated body or a wrong file is never recorded: it raises
  :class:`MalformedDownloadError` naming the URL (or file) and what was wrong.
- :func:`mirrored_url`: an archive's URL on a mirror (config ``mirror``: a copy of the owners'
  servers, e.g. on a cluster without internet access, or a test's local server); the checksums
  stay the catalog's.
- :func:`extract` unpacks tar / tar.gz / tar.xz / zip into a staging directory, refusing members
  that would land outside it (``..``, absolute paths, links pointing outside, device files), and
  writes the completion marker last before renaming the staging directory into place, so a
  half-extracted directory is never taken as complete.
- Disk first (dens.data.disk_space): before :func:`download` or :func:`extract` writes anything,
  what the step needs (the catalog's ``size.download``, less a resumable part file; a plain
  tar's own size; a compressed archive's ``size.extracted``) is compared with the space free in
  its folder: too little raises :class:`dens.errors.DiskError` naming the folder, the space
  needed and the space free; no size known logs a warning that the space was not checked.

Modules: catalog (Archive, load_catalog, get_archive, mirrored_url), transfer (download,
download_archive, fetch), checksums (verify, normalize_digest), content (content_problem,
size_range, archive_format and the format lists), extract (extract, is_extracted) and errors
(the exceptions and the warning all of them raise).
"""
