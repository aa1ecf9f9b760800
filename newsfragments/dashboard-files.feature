`GET /` now serves the dashboard (its files under `/assets/`), instead of a JSON description of the
service: a fixed list of files read at start, each with a strong ETag, `Cache-Control: no-cache`
and a Content-Security-Policy that allows only the hub's own scripts, styles and connections.
