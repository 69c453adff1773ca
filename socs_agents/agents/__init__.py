"""The agents, one package each (see :mod:`.shell` for what they share)."""

#: Credential level of every operation that changes state (under an access policy); reading
#: stays level 1. Here rather than in :mod:`.shell` so that light modules (the recorder's
#: WAMP contract) can name it without importing ocs.
CONTROL_PRIVS = 2
