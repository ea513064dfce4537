"""The course's fixed prompt texts. Training, offline inference and `vllm serve` all use these."""

REFUSAL = "Das geht aus den vorliegenden Dokumenten nicht hervor."

SYSTEM_PROMPT = (
    "Du bist der interne Assistent der Donautal Messtechnik GmbH. Beantworte die Frage knapp und nur "
    f"anhand des Kontexts. Steht die Antwort nicht im Kontext, antworte genau: {REFUSAL}"
)


def qa_messages(question: str, context: str | None = None, answer: str | None = None,
                system: str = SYSTEM_PROMPT) -> list[dict]:
    """Chat messages for one QA example: system prompt + context + question (+ the answer for training)."""
    user = f"Kontext:\n{context}\n\nFrage: {question}" if context else f"Frage: {question}"
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages
