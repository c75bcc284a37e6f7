"""The production repository's permission model, as modes (docs/operations.md has it as a table).

A publish-group member adds versions and can rename, remove or replace nothing they do not own:
every directory members write into is sticky, axon's state directory is root's, and each
version's history is its owner's.
"""

from __future__ import annotations

__all__ = ["AUDIT_LOG_MODE", "CACHE_DIR_MODE", "CORE_DIR_MODE", "CORE_FILE_MODE", "DIR_MODE", "FILE_MODE",
           "HISTORY_KEY_MODE", "RECORD_MODE", "SHARED_DIR_MODE", "STATE_DIR_MODE"]

FILE_MODE = 0o444  # a published file, an audit receipt: nobody writes it again
DIR_MODE = 0o2555  # a published version: read-only, setgid: nobody edits it in place
SHARED_DIR_MODE = 0o3775  # <root>/, <ns>/, <name…>/, .axon/{staging,locks,history}/: add entries, touch only your own
STATE_DIR_MODE = 0o2755  # <root>/.axon/: root creates, renames and removes everything directly in it
HISTORY_KEY_MODE = 0o2755  # .axon/history/<key>/: only the version's owner (and root) moves copies in or out
RECORD_MODE = 0o644  # .axon/repository.yaml: the recorded publish group
AUDIT_LOG_MODE = 0o664  # .axon/audit.log: the group appends (chattr +a where the file system has it)
CORE_DIR_MODE = 0o2750  # .axon/core/: MLOS Core's token and registrations; setgid, so they get the group
CORE_FILE_MODE = 0o640  # the admin token, the registrations file: root and the group read them
CACHE_DIR_MODE = 0o555  # a serving host's verified local copy of a version (files FILE_MODE): read-only
