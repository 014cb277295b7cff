"""What the language model is told, without weights: the one system prompt policy of the CLI, the server and the
assistant."""

import pytest

from edgemm.runtime.llm.chat import DEFAULT_SYSTEM, system_prompt, with_system
from edgemm.runtime.server import openai

QUESTION = [{"role": "user", "content": "Name three rivers."}]


def test_the_policy_gives_ours_unless_one_is_chosen():
    assert system_prompt() == system_prompt(None) == DEFAULT_SYSTEM
    assert system_prompt("Answer in French.") == "Answer in French."
    assert system_prompt("") is None  # the chat template's own default


def test_a_conversation_without_a_system_message_gets_ours():
    assert with_system(QUESTION) == [{"role": "system", "content": DEFAULT_SYSTEM}, *QUESTION]
    assert with_system(QUESTION, "") == QUESTION


@pytest.mark.parametrize("role", ["system", "developer"])
def test_a_clients_own_system_message_is_kept_and_ours_not_added(role):
    body = {"messages": [{"role": role, "content": "Answer in French."}, *QUESTION]}
    messages = openai.chat_request(body, 256).messages
    assert with_system(messages) == [{"role": "system", "content": "Answer in French."}, *QUESTION]


def test_the_server_and_the_cli_send_the_same_system_message():
    """The server's text requests and ``edgemm ask`` (no --system) both lead with the policy's message."""
    from edgemm.runtime.cli import _system, build_parser

    args = build_parser().parse_args(["ask", "Name three rivers."])
    served = with_system(openai.chat_request({"messages": QUESTION}, 256).messages)
    assert served[0] == {"role": "system", "content": _system(args)} == {"role": "system", "content": DEFAULT_SYSTEM}
