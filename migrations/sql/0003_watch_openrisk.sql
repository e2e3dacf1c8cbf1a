-- Every table a cached response is built from, and the tags its rows invalidate.
-- Tags: 'risk:<id>' (a risk's detail, which embeds its mitigations, sub-actions and assets),
-- 'mitigation:<id>', 'asset:<id>', and per-tenant collections read by lists and aggregates
-- ('risks', 'mitigations', 'assets', 'risk_history'). 'all' drops every entry of a tenant.
SELECT cache_watch('tenants', 'r.id', $$ARRAY['all']$$);
SELECT cache_watch('risks', 'r.tenant_id', $$ARRAY['risk:' || r.id, 'risks']$$);
SELECT cache_watch('mitigations', 'r.tenant_id',
    $$ARRAY['risk:' || r.risk_id, 'mitigation:' || r.id, 'mitigations']$$);
SELECT cache_watch('mitigation_subactions', 'r.tenant_id',
    $$ARRAY['mitigation:' || r.mitigation_id,
            'risk:' || (SELECT m.risk_id FROM mitigations m
                        WHERE m.tenant_id = r.tenant_id AND m.id = r.mitigation_id)]$$);
SELECT cache_watch('assets', 'r.tenant_id', $$ARRAY['asset:' || r.id, 'assets']$$);
SELECT cache_watch('risk_assets', 'r.tenant_id', $$ARRAY['risk:' || r.risk_id, 'asset:' || r.asset_id]$$);
SELECT cache_watch('risk_history', 'r.tenant_id', $$ARRAY['risk_history']$$);
