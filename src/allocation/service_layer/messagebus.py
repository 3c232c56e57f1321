"""Dispatches each command to its one handler, with the services every handler is given; errors
propagate. A handler publishes the events of what it changed through those services (one road:
``Services.publish``, or the counter's own step), so no event comes back through the bus."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from allocation.domain import commands
from allocation.service_layer.services import Services

CommandHandler = Callable[[Any, Services], Any]


class MessageBus:
    def __init__(self, services: Services,
                 command_handlers: Mapping[type[commands.Command], CommandHandler]) -> None:
        self.services = services
        self.command_handlers = command_handlers

    def handle(self, command: commands.Command) -> Any:
        """Handle a command; return its handler's result."""
        try:
            handler = self.command_handlers[type(command)]
        except KeyError:
            raise TypeError(f"{command!r} is not a command with a handler") from None
        return handler(command, self.services)
