"""``edgemm serve``: an OpenAI-compatible HTTP server and the offline web assistant (the ``serve`` extra).

- :mod:`.models` loads each bundle once and gives every model one inference thread (:mod:`.workers`);
- :mod:`.openai` checks requests and writes OpenAI's response, chunk and error formats;
- :mod:`.app` is the Starlette application: routes, API key, request size limits, timeouts, cancellation;
- ``web/index.html`` is the page served at ``/`` (voice, camera and typed questions; no CDN, no build step).

Every answer comes from the library's entry points (``Chat``/``Generation``, ``ImageQuestion``, ``Transcriber``,
``Synthesizer``, ``Assistant``); the server only translates HTTP to them and back.
"""
