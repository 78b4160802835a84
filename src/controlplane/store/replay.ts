/**
 * A stored version's state, rebuilt: the nearest stored document at or
 * before it, then the deltas after that document in order; the result's
 * digest must be the version's (anything else is a corrupt store, said as
 * such, never served). And when a new version should store its whole
 * document rather than its delta.
 */
import { parseDesiredState } from '../../desired/state.js';
import { IndexedState } from '../../protocol/state.js';
import { StoreError, type StoredVersion } from './store.js';

/** A document is stored at least every this many versions… */
const DOCUMENT_EVERY_VERSIONS = 256;
/** …or once the changes since the last one pass this share of the state (and this floor). */
const DOCUMENT_EVERY_SHARE = 0.25;
const DOCUMENT_EVERY_CHANGES = 10_000;

/** Whether the version after `versions` (whose delta is `delta`, null when its policies changed) stores its whole document. */
export function storesDocument(versions: readonly StoredVersion[], delta: StoredVersion['delta'], bindings: number): boolean {
  if (delta === null) return true;
  let changes = delta.add.length + delta.remove.length;
  for (let i = versions.length - 1, n = 1; i >= 0; i--, n++) {
    const v = versions[i]!;
    if (v.document) return n >= DOCUMENT_EVERY_VERSIONS || changes > Math.max(DOCUMENT_EVERY_CHANGES, bindings * DOCUMENT_EVERY_SHARE);
    changes += v.delta!.add.length + v.delta!.remove.length;
  }
  return true; // no document before it at all
}

/** Index of the oldest version still needed to rebuild `versions[at]` (its nearest document). */
export function baseOf(versions: readonly StoredVersion[], at: number): number {
  let from = at;
  while (from >= 0 && !versions[from]!.document) from--;
  return from;
}

/** The state of `versions[at]`, rebuilt from the store. */
export async function stateOf(versions: readonly StoredVersion[], at: number, document: (digest: string) => Promise<string | undefined>): Promise<IndexedState> {
  const target = versions[at]!;
  const from = baseOf(versions, at);
  const corrupt = (why: string) => new StoreError('ESTORE_CORRUPT', `version ${target.version}: ${why}`, { entry: `version ${target.version}` });
  if (from < 0) throw corrupt('no stored document at or before it');
  const base = versions[from]!;
  const text = await document(base.digest);
  if (text === undefined) throw corrupt(`the document of version ${base.version} (${base.digest}) is missing`);
  const state = IndexedState.of(parseDesiredState(JSON.parse(text), `document ${base.digest}`));
  for (let i = from + 1; i <= at; i++) {
    const delta = versions[i]!.delta;
    if (!delta) throw corrupt(`version ${versions[i]!.version} has neither a document nor a delta`);
    state.applyDelta(delta, `version ${versions[i]!.version}`);
  }
  if (state.digest !== target.digest) throw corrupt(`rebuilt to digest ${state.digest}, not ${target.digest}`);
  return state;
}
