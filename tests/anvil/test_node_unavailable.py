"""A node the API cannot reach: a proposal (which reads chain time and its title) is answered
503 with Retry-After, as a problem, and writes nothing; once the node is back, the same
request with the same Idempotency-Key is served. A request already answered is answered again
while the node is down (its stored answer: the chains are read only for a new one)."""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient

from gateway.chain.anvil import running_anvil_devnet
from gateway.config import Settings
from gateway.runner import build_system

PROBLEM = "application/problem+json"


def test_a_proposal_while_the_business_node_is_down_is_a_503(tmp_path, database_url,
                                                            capsys) -> None:
    settings = Settings(_env_file=None)
    with running_anvil_devnet(settings.payment_chain_id, settings.business_chain_id,
                              keep_state=True) as net:  # the restarted node keeps its chain
        system = build_system(settings, tmp_path / "run", database_url=database_url,
                              devnet=net)
        try:
            client = TestClient(system.app, raise_server_exceptions=False)
            ents = system.demo["enterprises"]
            title = ents["seller"]["titles"][0]
            now = max(system.ctx.payment.now(), system.ctx.business.now())
            body = {"role": "seller", "counterparty": ents["buyer"]["id"],
                    "payment": {"token": net.info.payment.token, "amount": "1000"},
                    "delivery": {"token_id": title["token_id"],
                                 "document_hash": title["document_hash"]},
                    "deadlines": {"delivery": now + 3600, "payment": now + 7200}}
            headers = {"Authorization": f"Bearer {ents['seller']['api_key']}",
                       "Idempotency-Key": str(uuid.uuid4())}
            net.business.node.stop(remove=False)
            down = client.post("/v1/trades", json=body, headers=headers)
            assert down.status_code == 503, down.text
            assert down.headers["content-type"].split(";")[0] == PROBLEM
            assert "node" in down.json()["detail"] and int(down.headers["Retry-After"]) > 0
            assert client.get("/v1/trades", headers=headers).json()["items"] == []
            access = [line for line in capsys.readouterr().out.splitlines()
                      if "http_request" in line and "method=POST" in line]
            assert "status=503" in access[-1]  # the access log says what the client got
            net.business.node.start()
            up = client.post("/v1/trades", json=body, headers=headers)
            assert up.status_code == 201, up.text
            net.business.node.stop(remove=False)
            again = client.post("/v1/trades", json=body, headers=headers)
            assert again.status_code == 201 and again.json() == up.json(), again.text
            other = client.post("/v1/trades", json=body, headers={
                **headers, "Idempotency-Key": str(uuid.uuid4())})
            assert other.status_code == 503, other.text
            reused = client.post("/v1/trades", json={**body, "payment": {
                **body["payment"], "amount": "1001"}}, headers=headers)
            assert reused.status_code == 422, reused.text  # a key reused: told, not a 503
            net.business.node.start()
        finally:
            system.close()
