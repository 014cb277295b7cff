"""``edgemm serve``: an OpenAI-compatible HTTP server and the offline web assistant (the ``serve`` extra).

- :mod:`.models` loads each bundle once and gives every model one inference thread (:mod:`.workers`);
- :mod:`.openai` checks requests and writes OpenAI's response, chunk and error formats;
- :mod:`.app` is the Starlette application: it assembles the routes, waits for the workers (timeouts,
  cancellation) and serves; the routes by resource: :mod:`.chat`, :mod:`.audio` (and :mod:`.live`),
  :mod:`.assistant` (and :mod:`.wake`); :mod:`.http` turns errors into OpenAI's and reads requests;
  :mod:`.guard` and :mod:`.connections` hold the API key, size limits and connection limits;
- ``web/index.html`` is the page served at ``/`` (voice, camera and typed questions; no CDN, no build step).

Every answer comes from the library's entry points (``Chat``/``Generation``, ``ImageQuestion``, ``Transcriber``,
``Synthesizer``, ``Assistant``); the server only translates HTTP to them and back.
"""
