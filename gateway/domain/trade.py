"""The trade machine's public surface, one import for its users (the engine, the API, tests).

The machine is split by what each part is (the raiden way): `state` (terms, legs, phases),
`inputs` (actions, chain logs, blocks), `effects` (transactions to make, notifications), `facts`
(what the chains' facts mean for a trade), `wanted` (the transactions those facts call for) and
`machine` (`state_transition`, the rules). Read the rules at the top of `gateway.domain.machine`
before changing any of them."""

from __future__ import annotations

from gateway.domain.effects import (  # noqa: F401
    ContractSend,
    ContractSendDeliveryClaim,
    ContractSendDeliveryLock,
    ContractSendDeliveryRefund,
    ContractSendPaymentClaim,
    ContractSendPaymentLock,
    ContractSendPaymentRefund,
    Effect,
    EventClaimAtRisk,
    EventLockRejected,
    EventPhaseChanged,
    EventTradeFlagged,
    InvalidTransition,
    InvariantViolated,
)
from gateway.domain.facts import (  # noqa: F401
    buyer_took_delivery,
    deadline_without_progress,
    delivery_lock_final,
    delivery_lock_problems,
    opens,
    payment_lock_final,
    payment_lock_problems,
    payment_to_claim,
    pays_seller,
    seller_paid,
    wake_times,
)
from gateway.domain.inputs import (  # noqa: F401
    Action,
    ActionAcceptTrade,
    ActionCancelTrade,
    ActionProposeTrade,
    ActionTakeDelivery,
    Block,
    ChainBatch,
    ChainDisagrees,
    ChainRef,
    ContractReceive,
    ContractReceiveClaimed,
    ContractReceiveDeliveryLocked,
    ContractReceivePaymentLocked,
    ContractReceiveRefunded,
    EffectRefused,
    Input,
    PreimageRevealed,
    Route,
)
from gateway.domain.machine import (  # noqa: F401
    block_transition,
    check_invariants,
    new_trade,
    state_transition,
)
from gateway.domain.marks import (  # noqa: F401
    EffectKey,
    EffectKind,
    Flag,
    FlagKind,
)
from gateway.domain.state import (  # noqa: F401
    ALERT_PHASES,
    AWAITING_HASHLOCK,
    FINAL_PHASES,
    Chain,
    DeliveryLeg,
    LegStatus,
    PaymentLeg,
    Phase,
    Terms,
    TradeState,
    is_active,
    is_hashlock,
    terms_problems,
)
