-- A dispatcher claims a notification for a while before sending it, so that
-- several instances sharing the outbox send each notification once; a claim
-- that outlives a dead dispatcher expires and another one takes over.
ALTER TABLE outbox ADD COLUMN claimed_until TEXT;
