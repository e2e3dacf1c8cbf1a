-- A risk's detail embeds its linked assets. Until now the API learned those assets' tags only by
-- reading the detail, and then read it again under them. Now a change to an asset invalidates
-- 'risk:<id>' of every risk linked to it, so a detail depends on 'risk:<id>' alone and every tag
-- a cached response depends on is known before its first Redis call.
--
-- The links are read when the asset's row changes. Deleting an asset deletes its links first
-- (the foreign key's cascade runs before this trigger), and each deleted link invalidates its
-- risk through the risk_assets trigger, so the subquery finding none then loses nothing.
SELECT cache_watch('assets', 'r.tenant_id',
    $$ARRAY['asset:' || r.id, 'assets']
      || ARRAY(SELECT 'risk:' || ra.risk_id FROM risk_assets ra
               WHERE ra.tenant_id = r.tenant_id AND ra.asset_id = r.id)$$);
