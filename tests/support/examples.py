"""The documentation's examples, sent as a reader would send them."""

from __future__ import annotations

import requests

CURL_BODY = '{"input": "Your text to embed here", "model": "intent-embed"}'


def curl_example(host: str, key: str, timeout: float = 60) -> requests.Response:
    """The documented curl request (`curl -s -X POST .../v2/embeddings -H ... -d '...'`), with
    the same method, headers and body, sent from Python."""
    return requests.post(
        f"http://{host}/v2/embeddings",
        headers={
            "accept": "application/json",
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
        },
        data=CURL_BODY,
        timeout=timeout,
    )


def python_example(host: str, key: str, timeout: float = 60) -> requests.Response:
    """The documented Python example: `requests.post` of the same body to /v2/predict."""
    url = f"http://{host}/v2/predict"
    headers = {
        "accept": "application/json",
        "Authorization": f"Bearer {key}",
        "Content-Type": "application/json",
    }
    data = {"input": "Your text to embed here", "model": "intent-embed"}
    return requests.post(url, json=data, headers=headers, timeout=timeout)


def openai_example(host: str, key: str) -> list[float]:
    """The documented `openai` client call; the one vector it returns."""
    from openai import OpenAI

    client = OpenAI(api_key=key, base_url=f"http://{host}/v2")
    response = client.embeddings.create(
        model="intent-embed",
        input="I want to use the intent embeddings api",
        encoding_format="float",
    )
    return list(response.data[0].embedding)
