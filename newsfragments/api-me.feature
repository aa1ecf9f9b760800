`GET /api/me` answers any valid token with its user, its expiry and its `channels` claim, and a
refused one with 401 and the handshake's reason, so that a browser page can tell a refused token
from a hub that is down.
