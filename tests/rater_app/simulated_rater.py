"""A scripted rater that drives the running app over HTTP exactly as a browser does.

It logs in through the login form, reads the page config, joins Gradio's queue with the same
events the page fires (load, vote buttons) and follows the streamed results, then fetches the
tile image like the <img> would. Load tests, durability tests and the latency benchmark
(benchmarks/rating_latency.py) use it to stand in for many pathologists at once. It reaches
into Gradio's private routes, so it is a test and benchmark client, not part of the package.
"""

from __future__ import annotations

import json
import re
import secrets
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

_POSITION = re.compile(r'data-position="(\d+)"')
_TILE_SRC = re.compile(r'id="tile-img"[^>]*src="tiles/([0-9a-f]+)\.png"')


class RatingClientError(RuntimeError):
    """The app answered something a browser would show as an error."""


@dataclass(frozen=True)
class TileView:
    """What the page shows after an event: the tile's place and token, or None when finished."""

    position: int | None
    token: str | None
    progress: str
    message: str


class SimulatedRater:
    """One rater's browser session: `start()` once, then `vote(...)` per tile."""

    def __init__(
        self,
        base_url: str,
        name: str,
        secret: str,
        timeout: float = 60.0,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        """`base_url` may end in a sub-path (`https://host/histo`); `verify` is httpx's."""
        self.name = name
        self.secret = secret
        self.client = httpx.Client(base_url=base_url, timeout=timeout, verify=verify)
        self.page_path = urlsplit(base_url).path.rstrip("/") + "/"
        self.session_hash = secrets.token_hex(6)
        self.view: TileView | None = None
        self._events: dict[str, tuple[int, int, bool]] = {}
        self._outputs: dict[str, list[str | None]] = {}  # elem_id of each output, per event

    def close(self) -> None:
        self.client.close()

    def login(self) -> None:
        """Post the login form and read the page config, as the browser does on first load."""
        response = self.client.post("/login", data={"name": self.name, "secret": self.secret})
        if response.status_code != 303 or response.headers.get("location") != self.page_path:
            raise RatingClientError(f"login failed for {self.name}")
        config = self.client.get("/config").json()
        elements = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}
        for dependency in config["dependencies"]:
            target, trigger = dependency["targets"][0]
            event = (dependency["id"], target, dependency.get("queue") is not False)
            outputs = [elements.get(output) for output in dependency["outputs"]]
            name = None
            if trigger == "load" and "tile-frame" in outputs:
                name = "start"
            elif trigger == "click" and elements.get(target) in ("vote-real", "vote-synthetic", "continue"):
                name = elements[target]
            if name is not None:
                self._events[name] = event
                self._outputs[name] = outputs

    def start(self) -> TileView:
        """Fire the page's load event: the app answers with the first unanswered tile."""
        return self._run("start", [])

    def vote(self, vote: str, confidence: int | None = None) -> TileView:
        """Click Real or Synthetic on the tile on screen and wait until the next one is loaded."""
        if self.view is None or self.view.token is None:
            raise RatingClientError("no tile on screen")
        return self._run(f"vote-{vote}", [self.view.token, confidence, None])

    def fetch_tile(self, token: str) -> bytes:
        """Load a tile image the way the page's <img> does."""
        response = self.client.get(f"/tiles/{token}.png")
        if response.status_code != 200:
            raise RatingClientError(f"tile {token}: HTTP {response.status_code}")
        return response.content

    def _run(self, event: str, data: list) -> TileView:
        fn_index, trigger_id, queued = self._events[event]
        body = {
            "data": data,
            "event_data": None,
            "fn_index": fn_index,
            "trigger_id": trigger_id,
            "session_hash": self.session_hash,
        }
        output = self._queued(body) if queued else self._direct(body)
        shown = dict(zip(self._outputs[event], output, strict=True))
        html, progress, message = shown["tile-frame"], shown["progress"], shown["message"]
        position = _POSITION.search(html or "")
        source = _TILE_SRC.search(html or "")
        self.view = TileView(
            position=int(position.group(1)) if position else None,
            token=source.group(1) if source else None,
            progress=progress if isinstance(progress, str) else "",
            message=message if isinstance(message, str) else "",
        )
        if self.view.token is not None:
            self.fetch_tile(self.view.token)
        elif 'id="block-done"' in (html or ""):  # a pause between blocks: press Continue, as a rater does
            return self._run("continue", [])
        return self.view

    def _direct(self, body: dict) -> list:
        """An event outside Gradio's queue: one POST, the outputs in its answer."""
        response = self.client.post("/gradio_api/run/predict", json=body)
        if response.status_code != 200:
            raise RatingClientError(
                f"run/predict answered HTTP {response.status_code}: {response.text[:200]}"
            )
        return response.json()["data"]

    def _queued(self, body: dict) -> list:
        """An event through Gradio's queue: join, then follow the session's event stream."""
        joined = self.client.post("/gradio_api/queue/join", json=body)
        if joined.status_code != 200:
            raise RatingClientError(f"queue/join answered HTTP {joined.status_code}: {joined.text[:200]}")
        return self._await(joined.json()["event_id"])

    def _await(self, event_id: str) -> list:
        deadline = time.monotonic() + self.client.timeout.read
        url = f"/gradio_api/queue/data?session_hash={self.session_hash}"
        while time.monotonic() < deadline:
            with self.client.stream("GET", url) as stream:
                for line in stream.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    message = json.loads(line[5:])
                    if message.get("event_id") != event_id:
                        continue
                    if message.get("msg") == "process_completed":
                        if not message.get("success"):
                            raise RatingClientError(f"event failed: {message.get('output')}")
                        return message["output"]["data"]
        raise RatingClientError(f"no answer for event {event_id}")


def simulated_rater(
    base_url: str, name: str, secret: str, verify: ssl.SSLContext | bool = True
) -> SimulatedRater:
    """A logged-in, started simulated rater."""
    rater = SimulatedRater(base_url, name, secret, verify=verify)
    rater.login()
    rater.start()
    return rater
