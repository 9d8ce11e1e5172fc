"""The model loading in the background while the REPL starts: whether it is ready, still loading or
failed, who to tell when it has loaded, and the engine itself (the first use waits for it)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future

from simlab.engine.protocol import Engine
from simlab.errors import ModelFailed, SimlabError


class Status:
    """What the loading thread is doing, as the loader says it (`progress=`), kept for the status
    line instead of written to the terminal under the prompt or the editor."""

    live = False  # (models.gguf.stage: no ticking line on stderr)

    def __init__(self):
        self.text = ""
        self.listeners: list[Callable[[], None]] = []

    def __call__(self, message: str) -> None:
        self.text = message.strip().removesuffix("...").strip()
        for listener in self.listeners:
            listener()


class Loading:
    """An engine, or the future of one being loaded by another thread (its steps in `status`)."""

    def __init__(self, engine: Engine | Future, status: Status | None = None):
        self._engine = None if isinstance(engine, Future) else engine
        self._future = engine if isinstance(engine, Future) else None
        self.status = status or Status()
        self._telling = False  # (`tell` follows the loader's steps once)

    def on_status(self, callback: Callable[[], None]) -> None:
        """Call back (from the loading thread) each time the loader reports a step."""
        self.status.listeners.append(callback)

    @property
    def ready(self) -> bool:
        """The engine is there (the next use does not wait)."""
        future = self._future
        return self._engine is not None or (future.done() and future.exception() is None)

    @property
    def loading(self) -> bool:
        """Still loading: the next use waits."""
        return self._engine is None and not self._future.done()

    @property
    def failed(self) -> bool:
        """Loading failed (the next use raises ModelFailed, saying why)."""
        future = self._future
        return self._engine is None and future.done() and future.exception() is not None

    def tell(self, say: Callable[[str], None]) -> None:
        """Say that the next use waits for the model, with the step the loader is at, and again at
        each step it reports until the model is there (a first use of a big GGUF converts it)."""

        def now() -> str:
            step = f" ({self.status.text})" if self.status.text else ""
            return f"the model is still loading{step}; this goes on when it is ready"

        if not self._telling:
            self._telling = True
            self.on_status(lambda: say(now()) if self.loading else None)
        say(now())

    def on_loaded(self, callback: Callable[[], None]) -> None:
        """Call back (from the loading thread) when loading ends, loaded or failed; now if it has."""
        if self._future is not None:
            self._future.add_done_callback(lambda future: callback())

    def engine(self) -> Engine:
        """The engine, once it has loaded (waits for it); ModelFailed says why it did not."""
        if self._engine is None:
            try:
                self._engine = self._future.result()
            except SimlabError as exc:
                raise ModelFailed(str(exc)) from None
        return self._engine
