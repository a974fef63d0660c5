# -*- test-case-name: test.test_admin_api -*-
"""The OpenAPI 3.0 document of C{/api/v1}, served at C{/api/v1/openapi.json}."""
from __future__ import annotations

from typing import Any

__all__ = ["openapi_document"]

_ERROR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_STR = {"type": "string"}
_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}
_TARGETS = {"type": "array", "items": _STR, "description": "host:port addresses on the client's side"}
_MAP = {"type": "object", "additionalProperties": _STR}


def _client_fields() -> dict[str, Any]:
    return {
        "remark": _STR, "vkey": {"type": "string", "description": "random when omitted"}, "enabled": _BOOL,
        "config_conn_allow": _BOOL, "rate_limit": {"type": "integer", "minimum": 0, "description": "KB/s"},
        "flow_limit": {"type": "integer", "minimum": 0, "description": "MB"},
        "max_conn": {"type": "integer", "minimum": 0}, "max_tunnels": {"type": "integer", "minimum": 0},
        "basic_username": _STR, "basic_password": _STR, "web_username": _STR,
        "web_password": {"type": "string", "description": "write-only; stored as a scrypt hash"},
        "crypt": _BOOL, "compress": _BOOL,
    }


def _tunnel_fields() -> dict[str, Any]:
    return {
        "client_id": _INT, "mode": {"type": "string", "enum": ["tcp", "udp", "socks5", "httpProxy", "secret", "p2p",
                                                                "file"]},
        "server_port": {"type": "integer", "minimum": 0, "maximum": 65535}, "server_ip": _STR,
        "targets": _TARGETS, "remark": _STR, "password": _STR, "local_path": _STR, "strip_pre": _STR,
        "enabled": _BOOL, "options": _MAP,
    }


def _host_fields() -> dict[str, Any]:
    return {
        "client_id": _INT, "host": _STR, "location": _STR,
        "scheme": {"type": "string", "enum": ["all", "http", "https"]}, "targets": _TARGETS,
        "host_change": _STR, "headers": _MAP, "cert_file": _STR, "key_file": _STR, "redirect_https": _BOOL,
        "remark": _STR, "enabled": _BOOL, "options": _MAP,
    }


def _record(fields: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {"id": _INT, **fields, **extra}}


def _body(schema: str, required: list[str]) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {"required": True, "content": {"application/json": {"schema": {"allOf": [ref], "required": required}
                                                               if required else ref}}}


def _ok(schema: dict[str, Any], code: str = "200") -> dict[str, Any]:
    return {code: {"description": "ok", "content": {"application/json": {"schema": schema}}},
            "400": _ERROR, "401": _ERROR, "403": _ERROR, "404": _ERROR}


def _crud(name: str, schema: str, required: list[str], extra_list_params: list[dict[str, Any]]) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"}
    item = {"name": "id", "in": "path", "required": True, "schema": _INT}
    return {
        f"/api/v1/{name}": {
            "get": {"summary": f"List {name}", "parameters": extra_list_params,
                    "responses": _ok({"type": "array", "items": ref})},
            "post": {"summary": f"Create one of {name}", "requestBody": _body(schema + "Input", required),
                     "responses": {**_ok(ref, "201"), "409": _ERROR, "415": _ERROR}},
        },
        f"/api/v1/{name}/{{id}}": {
            "parameters": [item],
            "get": {"summary": "Read one", "responses": _ok(ref)},
            "patch": {"summary": "Change fields", "requestBody": _body(schema + "Input", []),
                      "responses": {**_ok(ref), "409": _ERROR}},
            "put": {"summary": "Change fields (same as PATCH)", "requestBody": _body(schema + "Input", []),
                    "responses": {**_ok(ref), "409": _ERROR}},
            "delete": {"summary": "Delete (applied at once)", "responses": _ok({"type": "object"})},
        },
    }


def openapi_document(version: str, base_url: str) -> dict[str, Any]:
    """
    @param version: nps's version.
    @param base_url: nps.conf C{web_base_url} (the server URL's path).
    @return: The document as a JSON-able dict.
    """
    client_id_param = [{"name": "client_id", "in": "query", "required": False, "schema": _INT}]
    paths: dict[str, Any] = {
        "/api/v1/login": {"post": {
            "summary": "Log in (browser session); sets an HttpOnly cookie and returns the CSRF token",
            "security": [],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["username", "password"],
                "properties": {"username": _STR, "password": _STR}}}}},
            "responses": {"200": {"description": "logged in", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Session"}}}}, "401": _ERROR, "429": _ERROR}}},
        "/api/v1/logout": {"post": {"summary": "End the session", "responses": _ok({"type": "object"})}},
        "/api/v1/session": {"get": {"summary": "Who is logged in", "responses": _ok(
            {"$ref": "#/components/schemas/Session"})}},
        "/api/v1/openapi.json": {"get": {"summary": "This document", "responses": _ok({"type": "object"})}},
        "/api/v1/status": {"get": {"summary": "Server status, counts, traffic history for the chart",
                                   "responses": _ok({"type": "object"})}},
        "/api/v1/traffic": {"get": {"summary": "Bytes per client, tunnel and host (persisted + since the last flush)",
                                    "responses": _ok({"type": "object"})}},
        "/api/v1/clients/{id}/reset_traffic": {"post": {
            "summary": "Zero a client's traffic counter",
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": _INT}],
            "responses": _ok({"type": "object"})}},
        "/api/v1/tokens": {
            "get": {"summary": "List API tokens (admin)", "responses": _ok({"type": "array", "items": {
                "type": "object"}})},
            "post": {"summary": "Create a bearer token (shown once)", "requestBody": {"required": True, "content": {
                "application/json": {"schema": {"type": "object", "properties": {
                    "name": _STR, "client_id": {"type": "integer", "nullable": True}}}}}},
                "responses": _ok({"type": "object"}, "201")}},
        "/api/v1/tokens/{id}": {"delete": {
            "summary": "Revoke a token",
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": _INT}],
            "responses": _ok({"type": "object"})}},
        "/api/v1/live": {"get": {"summary": "WebSocket: client online/offline events, traffic every 2 s",
                                 "responses": {"101": {"description": "switching protocols"}, "401": _ERROR}}},
    }
    paths.update(_crud("clients", "Client", [], []))
    paths.update(_crud("tunnels", "Tunnel", ["client_id", "mode"], client_id_param + [
        {"name": "mode", "in": "query", "required": False, "schema": _STR}]))
    paths.update(_crud("hosts", "Host", ["client_id", "host", "targets"], client_id_param))
    traffic = {"bytes_in": _INT, "bytes_out": _INT}
    return {
        "openapi": "3.0.3",
        "info": {"title": "nps admin API", "version": version,
                 "description": "Manage nps clients, tunnels and domain hosts; changes apply at once."},
        "servers": [{"url": base_url or "/"}],
        "security": [{"bearer": []}, {"session": []}, {"authKey": [], "authTimestamp": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "nps admin token create NAME"},
                "session": {"type": "apiKey", "in": "cookie", "name": "nps_session",
                            "description": "from /api/v1/login; unsafe methods also need X-CSRF-Token"},
                "authKey": {"type": "apiKey", "in": "query", "name": "auth_key",
                            "description": "md5(nps.conf auth_key + timestamp); only when auth_key is set"},
                "authTimestamp": {"type": "apiKey", "in": "query", "name": "timestamp"},
            },
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": _STR}},
                "Session": {"type": "object", "properties": {
                    "authenticated": _BOOL, "user": _STR, "role": {"type": "string", "enum": ["admin", "client"]},
                    "client_id": {"type": "integer", "nullable": True}, "csrf_token": _STR}},
                "ClientInput": {"type": "object", "properties": _client_fields(), "additionalProperties": False},
                "Client": _record(_client_fields(), {
                    "online": _BOOL, "remote_addr": _STR, "version": _STR, "last_seen": {"type": "number"},
                    "web_password_set": _BOOL, "connections_open": _INT, "command": _STR, **traffic}),
                "TunnelInput": {"type": "object", "properties": _tunnel_fields(), "additionalProperties": False},
                "Tunnel": _record(_tunnel_fields(), {"running": _BOOL, "connections_open": _INT, **traffic}),
                "HostInput": {"type": "object", "properties": _host_fields(), "additionalProperties": False},
                "Host": _record(_host_fields(), traffic),
            },
        },
    }
