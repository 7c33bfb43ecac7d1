"""Where the deployment secret comes from: the environment, a file, SSM Parameter Store or
Secrets Manager. Exactly one source; AWS clients are built only when needed (and may be passed
in, so the same code runs under moto)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cosmicai.exceptions import RendezvousConfigError
from cosmicai.rendezvous.wire.auth import MIN_SECRET_BYTES


def load_secret(
    *,
    value: str | None = None,
    file: Path | None = None,
    ssm_parameter: str | None = None,
    secret_arn: str | None = None,
    ssm_client: Any = None,
    secretsmanager_client: Any = None,
) -> bytes | None:
    """The secret from the one source given, or None if none is given.

    ``secret_arn`` may be a Secrets Manager secret ARN (or name) or an SSM parameter ARN.
    Surrounding whitespace (a file's trailing newline) is not part of the secret.
    """
    given = {
        name: source
        for name, source in (
            ("secret", value),
            ("secret file", file),
            ("SSM parameter", ssm_parameter),
            ("secret ARN", secret_arn),
        )
        if source
    }
    if len(given) > 1:
        raise RendezvousConfigError(
            "give the rendezvous secret from one source, not " + " and ".join(given)
        )
    if not given:
        return None
    if value:
        secret = value.encode()
        where = "the secret given"
    elif file is not None:
        try:
            secret = file.read_bytes()
        except OSError as exc:
            raise RendezvousConfigError(f"cannot read the secret file {file}: {exc}") from exc
        where = f"secret file {file}"
    elif ssm_parameter or (secret_arn and secret_arn.startswith("arn:") and ":ssm:" in secret_arn):
        name = ssm_parameter or secret_arn
        assert name is not None
        secret = _from_ssm(name, ssm_client)
        where = f"SSM parameter {name}"
    else:
        assert secret_arn is not None
        secret = _from_secrets_manager(secret_arn, secretsmanager_client)
        where = f"secret {secret_arn}"
    secret = secret.strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise RendezvousConfigError(
            f"{where} holds {len(secret)} bytes; the rendezvous secret needs at least "
            f"{MIN_SECRET_BYTES}"
        )
    return secret


def _from_ssm(name: str, client: Any) -> bytes:
    # Lazy for cold start: boto3 is slow to import and only an AWS source or call needs it.
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        if client is None:
            import boto3  # lazy: see above

            client = boto3.client("ssm")
        response = client.get_parameter(Name=name, WithDecryption=True)
    except (BotoCoreError, ClientError) as exc:
        raise RendezvousConfigError(f"cannot read SSM parameter {name}: {exc}") from exc
    text: str = response["Parameter"]["Value"]
    return text.encode()


def _from_secrets_manager(secret_id: str, client: Any) -> bytes:
    # Lazy for cold start: boto3 is slow to import and only an AWS source or call needs it.
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        if client is None:
            import boto3  # lazy: see above

            client = boto3.client("secretsmanager")
        response = client.get_secret_value(SecretId=secret_id)
    except (BotoCoreError, ClientError) as exc:
        raise RendezvousConfigError(f"cannot read secret {secret_id}: {exc}") from exc
    if "SecretString" in response:
        text: str = response["SecretString"]
        return text.encode()
    binary: bytes = response["SecretBinary"]
    return binary
