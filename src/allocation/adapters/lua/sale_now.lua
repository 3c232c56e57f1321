-- The scripts' clock in the sale's slot (lib.lua's now_ms): when a sale made "now" opens.
-- KEYS[1] the sale.
return now_ms()
