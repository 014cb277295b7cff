"""What the language model is told, without weights: the one system prompt policy of the CLI, the server and the
assistant, and what a photo question about text says when no text was read."""

import pytest

from edgemm.runtime.llm.chat import DEFAULT_SYSTEM, system_prompt, with_system
from edgemm.runtime.server import openai
from edgemm.runtime.vision.classify import Label
from edgemm.runtime.vision.describe import (
    NO_TEXT_FOUND,
    OCR_FAILED,
    OCR_NOT_INSTALLED,
    OCR_OFF,
    ImageFacts,
    asks_about_text,
    grounded_question,
)

QUESTION = [{"role": "user", "content": "Name three rivers."}]
HOOK = [Label("hook, claw", 0.4, 600)]


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


@pytest.mark.parametrize(
    "question", ["What does the sign say?", "Read the label.", "What is written on it?", "What text is there?"]
)
def test_questions_about_text(question):
    assert asks_about_text(question)


@pytest.mark.parametrize("question", ["What animal is this?", "How many cups are there?", "What colour is it?"])
def test_questions_not_about_text(question):
    assert not asks_about_text(question)


@pytest.mark.parametrize(
    ("facts", "why"),
    [
        (ImageFacts(HOOK, unread=OCR_NOT_INSTALLED), OCR_NOT_INSTALLED),
        (ImageFacts(HOOK, unread=OCR_OFF), OCR_OFF),
        (ImageFacts(HOOK, unread=OCR_FAILED), OCR_FAILED),
        (ImageFacts(HOOK, ocr=True), NO_TEXT_FOUND),
    ],
)
def test_a_question_about_text_is_told_that_none_was_read_and_why(facts, why):
    prompt = grounded_question("What does the sign say?", [facts])
    assert f"No text could be read in the photo ({why})." in prompt
    assert prompt.endswith('Answer in one short sentence using only the description, starting with "I cannot read".')


def test_text_that_was_read_is_given_as_it_is():
    read, blank = ImageFacts(HOOK, ["OPEN 9 TO 5"], ocr=True), ImageFacts(HOOK, ocr=True)
    prompt = grounded_question("What does the sign say?", [read, blank])
    assert 'Text in the photo: "OPEN 9 TO 5".' in prompt and f"({NO_TEXT_FOUND})" in prompt
    assert prompt.endswith("using only the description.")


def test_other_questions_are_not_told_about_text():
    unread = grounded_question("What animal is this?", [ImageFacts(HOOK, unread=OCR_NOT_INSTALLED)])
    assert "text" not in unread.lower() and unread.endswith("using only the description.")
    blank = grounded_question("What animal is this?", [ImageFacts(HOOK, ocr=True)])
    assert "There is no text in the photo." in blank
