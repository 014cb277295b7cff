"""``edgemm wyoming``: edgemm's speech services for Home Assistant over the Wyoming protocol (the ``wyoming`` extra).

``audio`` turns the protocol's PCM chunks into the speech model's samples and speech back into chunks; ``handler``
answers one connection's events; ``service`` says what is loaded (``info``) and listens; ``cli`` is the command.
How to add it in Home Assistant: docs/HOME-ASSISTANT.md.
"""
