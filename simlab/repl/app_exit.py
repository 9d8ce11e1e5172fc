"""End a running prompt-toolkit app when SIGTERM or SIGHUP asks the REPL to stop.

Raising KeyboardInterrupt from the signal handler lands anywhere in asyncio's event loop, and the
loop's shutdown can then wait forever on the app's half-finished tasks. Instead the handler asks
the app to exit at its loop's next turn, as a key binding would."""

from __future__ import annotations

from contextlib import contextmanager

from simlab.repl.state import Chat


@contextmanager
def ends_on_signal(chat: Chat, app, exception: type[BaseException] | None = None):
    """While the block runs `app`, a stop signal ends it (raising `exception` from its run, else
    returning None). Pass the yielded hook as the app's `pre_run`: a signal that came before the
    app could exit ends it as soon as it starts."""

    def end() -> None:
        if app.future is not None and not app.future.done():
            app.exit(exception=exception) if exception is not None else app.exit()

    def exit_soon() -> None:  # from the signal handler: only schedule, never run app code here
        loop = app.loop
        if app.future is not None and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(end)

    def pre_run() -> None:  # runs once app.future and app.loop are set
        if chat.stopping is not None:
            end()

    chat.exit_app = exit_soon
    try:
        yield pre_run
    finally:
        chat.exit_app = None
