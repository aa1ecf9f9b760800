With the development secret, the start-up log prints `dashboard: http://127.0.0.1:8080/#token=...`
for each HTTP(S) listener: a link that opens the dashboard signed in as `admin` for 12 hours. The
token is in the fragment, which reaches no access log; no token is logged with `--jwt-secret-file`
or `--jwt-public-key`.
