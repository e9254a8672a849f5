"""The one exception hierarchy of pollctl."""

from __future__ import annotations


class PollingError(Exception):
    """Base of every error pollctl raises on purpose."""


class ConfigError(PollingError):
    """Raised when a gateways file or a setting is invalid; the message names the culprit."""


class ServiceUnavailable(PollingError):
    """Raised when Redis or the database does not answer; the message names the URL."""


class GatewayNotFound(PollingError):
    """Raised when a gateway name given on the command line is not configured."""


class AlertNotFound(PollingError):
    """Raised when an alert id names no alert."""


class AlertResolved(AlertNotFound):
    """Raised when acknowledging an alert that is already resolved."""


class ModbusError(PollingError):
    """Base of the errors of one Modbus exchange; they become a failed poll, never a crash."""


class GatewayUnreachable(ModbusError):
    """Raised when the TCP connection cannot be opened or is dropped."""


class GatewayTimeout(ModbusError):
    """Raised when the device does not answer within the gateway's timeout."""


class DeviceExceptionResponse(ModbusError):
    """Raised when the device answers with a Modbus exception code."""

    def __init__(self, message: str, *, function_code: int, exception_code: int) -> None:
        super().__init__(message)
        self.function_code = function_code
        self.exception_code = exception_code


class DecodeError(ModbusError):
    """Raised when registers cannot be decoded into a point's type."""
