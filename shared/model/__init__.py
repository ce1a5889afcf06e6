"""Wire models: the Partner Center referral (`referral`) and the webhook envelope (`webhook`)."""
