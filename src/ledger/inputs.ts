import { assertPayerAccount, SYSTEM_ACCOUNTS } from './accounts.ts'
import type { NewTransfer } from './sqlite-transfers.ts'
import type { GrantInput, ReserveInput } from './types.ts'
import { canonicalMeta, checkAmount, checkEpochMs, checkId, checkText } from './validate.ts'

// Store-independent: a caller's input checked and turned into the transfer both stores append.

/** A grant (system:grants → payer) or a clawback (payer → system:grants). */
export function grantTransfer (kind: 'grant' | 'clawback', input: GrantInput): NewTransfer {
  const payer = assertPayerAccount(input.account)
  return {
    id: checkId('id', input.id),
    kind,
    debitAccount: kind === 'grant' ? SYSTEM_ACCOUNTS.grants : payer,
    creditAccount: kind === 'grant' ? payer : SYSTEM_ACCOUNTS.grants,
    amount: checkAmount('amount', input.amount),
    meta: canonicalMeta({ reason: checkText('reason', input.reason) }),
  }
}

/** A reservation: pending payer → system:revenue until posted, voided or expired. */
export function reserveTransfer (input: ReserveInput): NewTransfer {
  return {
    id: checkId('id', input.id),
    kind: 'pending',
    debitAccount: assertPayerAccount(input.account),
    creditAccount: SYSTEM_ACCOUNTS.revenue,
    amount: checkAmount('amount', input.amount),
    timeoutAt: checkEpochMs('timeoutAt', input.timeoutAt),
    reference: checkText('reference', input.reference),
  }
}
