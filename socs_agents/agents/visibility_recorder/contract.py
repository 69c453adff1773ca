"""The WAMP contract between a VisibilityRecorder and its VisibilityManager.

What both sides must agree on, and nothing else: no heavy imports (the manager imports this
module, not the recorder's agent, which pulls in h5py and numpy).
"""

from __future__ import annotations

#: Credential level needed by the operations that change state (start, stop, sync): the
#: one every agent's controls need.
from .. import CONTROL_PRIVS  # noqa: E402,F401

#: The direct procedure, registered at ``<agent address>.<DIRECT_PROCEDURE>`` and called as
#: ``direct(op_name, params, password=None)`` with ``op_name`` one of ``ping``, ``sync``,
#: ``start``, ``stop``: one WAMP call runs the operation's checks and work and answers,
#: without an OCS session.
DIRECT_PROCEDURE = "direct"
#: The direct procedure's answer: ``{'success': bool, 'message': str, 'data': dict}``;
#: ``data`` is what the OCS task puts in ``session.data`` (its ``response`` is the answer).
REPLY_SUCCESS, REPLY_MESSAGE, REPLY_DATA = "success", "message", "data"
#: The direct procedure's keyword argument carrying the caller's password.
PASSWORD_KWARG = "password"
#: Messages of a direct call refused before any work.
NO_SUCH_OPERATION = 'No operation called "{op_name}"'
SHUTTING_DOWN = "the recorder is shutting down"

#: The recorder's monitoring feed (recorded), block :data:`STATUS_BLOCK`.
STATUS_FEED = "visibility_status"
STATUS_BLOCK = "status"
#: The fields of the status feed the manager reads.
STATUS_FIELDS = ("summary", "info", "op_type", "op_tag", "mode", "pipeline_id")
