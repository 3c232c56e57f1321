"""Dispatches commands (one handler, errors propagate) and the events they raise (many handlers,
errors logged). The queue is local to ``handle``; each command gets a fresh unit of work."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from allocation.domain import commands, events
from allocation.service_layer.unit_of_work import AbstractUnitOfWork

logger = logging.getLogger(__name__)

Message = commands.Command | events.Event
CommandHandler = Callable[..., Any]
EventHandler = Callable[[events.Event], None]


class MessageBus:
    def __init__(
        self,
        uow_factory: Callable[[], AbstractUnitOfWork],
        command_handlers: Mapping[type[commands.Command], CommandHandler],
        event_handlers: Mapping[type[events.Event], list[EventHandler]],
    ) -> None:
        self.uow_factory = uow_factory
        self.command_handlers = command_handlers
        self.event_handlers = event_handlers

    def handle(self, message: Message) -> Any:
        """Handle a message and the events it leads to; return the command handler's result."""
        result = None
        queue: list[Message] = [message]
        while queue:
            current = queue.pop(0)
            if isinstance(current, events.Event):
                self._handle_event(current)
            elif isinstance(current, commands.Command):
                result, raised = self._handle_command(current)
                queue.extend(raised)
            else:
                raise TypeError(f"{current!r} is neither a command nor an event")
        return result

    def _handle_command(self, command: commands.Command) -> tuple[Any, list[events.Event]]:
        handler = self.command_handlers[type(command)]
        uow = self.uow_factory()
        result = handler(command, uow=uow)
        return result, list(uow.collect_new_events())

    def _handle_event(self, event: events.Event) -> None:
        for handler in self.event_handlers.get(type(event), []):
            try:
                handler(event)
            except Exception:
                logger.exception("handler %s failed on %r", handler, event)
