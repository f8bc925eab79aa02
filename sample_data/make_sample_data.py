"""Write the Northwind Cloud sample datasets, with planted defects, into sample_data/.

Northwind Cloud is a fictional file backup and sync service (plans Free, Personal, Plus, Team,
Business; a desktop app, mobile apps, a web app; error codes NW-101 .. NW-940). Every clean
assistant answer follows one fixed style, which is what a LoRA run should learn and what
evaluation checks:

    starts with "Thanks for reaching out!", gives numbered steps ("1. ...") or a short direct
    explanation, and ends with the line "— Northwind Support"; 40-120 words.

Files written (run from the repo root: ``python sample_data/make_sample_data.py [OUT_DIR]``):

- support_train.jsonl  ~400 OpenAI-chat rows {messages, category, product, source}; about 10%
  multi-turn. Planted defects, each listed in defects.json with its 1-based line:
  exact_duplicate, near_duplicate (one word changed, punctuation, sentences reordered, a
  sentence appended, a truncated prompt), placeholder ("N/A", "<noinput>", ...), pii (emails,
  phones, Luhn-valid card numbers, IPv4 addresses, "sk-"/"AKIA" keys), refusal (canned AI
  disclaimers), truncated (cut mid-sentence, no signature), overlong (looping text), off_style
  (right content, casual, no greeting or signature), non_english (es/de/fr), missing_context
  ("see the attached screenshot" with nothing attached) and contamination (an eval row copied
  verbatim). Duplicates always come after the row they copy, so "keep the first" is right.
- support_eval.jsonl   60 held-out rows, 6 per category, with reference answers.
- support_pool.jsonl   200 more clean rows for "pull similar rows".
- messy_import.jsonl   30 lines: 20 valid rows in four shapes, 9 that must be rejected, 1 blank.
- defects.json         the manifest the detector tests measure against: "style"; for the train
  file "rows", "counts" and "defects" [{line, defect, duplicate_of_line, detail} plus, where
  they apply, planted (the exact planted string), pii_kind, edit, language, eval_line}]; for
  the messy file "lines", "valid_lines", "blank_lines" and "rejected" [{line, reason, shape,
  field, detail}], where field is what schema.RowError names when parsed as that shape.

Why planted and not found: later pages (dedup, cleaning, scoring, evaluation) need ground truth
to be tested against. Every clean unit (one question and its answer) is checked against the
other units of its category when generated (word-trigram Jaccard <= 0.5 for the row, <= 0.6 for
the prompt; tests check all pairs across the files), so the only lexical near-duplicates in the
files are the planted ones. The generator uses the standard
library and orjson only, one seeded random.Random, and no set iteration, so its output is
byte-identical on every run.
"""

from __future__ import annotations

import random
import re
import string
import sys
from collections import deque
from pathlib import Path
from typing import Any

import orjson

SEED = 20240611
HERE = Path(__file__).resolve().parent
GREETING = "Thanks for reaching out!"
SIGNATURE = "— Northwind Support"
CATEGORIES = ("billing", "plans", "refunds", "account", "security", "sync_errors", "sharing",
              "data_export", "mobile_app", "file_recovery")
SOURCES = ("helpdesk_export", "agent_macros", "community_forum", "synthetic")
UNITS_PER_TOPIC = 16
ROW_MAX_JACCARD = 0.5
PROMPT_MAX_JACCARD = 0.6
# How many rows of each kind; the train file gets TRAIN_CLEAN clean rows plus the defects.
EVAL_PER_CATEGORY = 6
POOL_ROWS = 200
TRAIN_CLEAN = 289
MESSY_VALID = 20
DEFECT_COUNTS = {
    "exact_duplicate": 10, "near_duplicate": 12, "placeholder": 10, "pii": 12, "refusal": 10,
    "truncated": 10, "overlong": 8, "off_style": 12, "non_english": 9, "missing_context": 10,
    "contamination": 8,
}

SYSTEM_PROMPTS = (
    "You are the customer support assistant for Northwind Cloud, a file backup and sync "
    "service. Answer clearly and sign every reply as Northwind Support.",
    "You are Northwind Support. Help Northwind Cloud customers with billing, accounts, sync, "
    "sharing and security questions.",
    "You are a helpful support agent for Northwind Cloud.",
)

# --- slot values shared by several topics ---------------------------------------------------
PAID = [
    {"plan": "Personal", "price": "$4.99 a month", "yearly": "$49.90 a year",
     "storage": "500 GB", "history": "30 days"},
    {"plan": "Plus", "price": "$9.99 a month", "yearly": "$99.90 a year", "storage": "2 TB",
     "history": "180 days"},
    {"plan": "Team", "price": "$8 per user a month", "yearly": "$80 per user a year",
     "storage": "1 TB per user", "history": "180 days"},
    {"plan": "Business", "price": "$15 per user a month", "yearly": "$150 per user a year",
     "storage": "5 TB per user", "history": "365 days"},
]
INDIVIDUAL = [{"plan": "Free", "storage": "5 GB", "history": "30 days"}] + PAID[:2]
DESKTOPS = [
    {"os": "Windows 11", "tray": "the Northwind icon in the system tray"},
    {"os": "Windows 10", "tray": "the Northwind icon in the system tray"},
    {"os": "macOS Sonoma", "tray": "the Northwind icon in the menu bar"},
    {"os": "macOS Ventura", "tray": "the Northwind icon in the menu bar"},
    {"os": "Ubuntu", "tray": "the Northwind icon in the top panel"},
]
_IOS = {"phone_os": "iOS", "store": "the App Store", "power": "Low Power Mode",
        "perm": "set Photos access to Full Access in the iOS Settings app",
        "bg": "turn on Background App Refresh for Northwind"}
_ANDROID = {"phone_os": "Android", "store": "Google Play", "power": "Battery Saver",
            "perm": "set the Photos and videos permission to Allow all",
            "bg": "set the battery usage of Northwind to Unrestricted"}
PHONES = [{"phone": "iPhone", **_IOS}, {"phone": "iPad", **_IOS},
          {"phone": "Pixel", **_ANDROID}, {"phone": "Samsung Galaxy", **_ANDROID}]

# --- topics ----------------------------------------------------------------------------------
# A topic is one kind of question. asks are user phrasings, slots fill {names} (a dict option
# sets several names at once; a list inside it is picked from per row), and the answer is
# GREETING + intro + numbered steps (or body sentences) + close + SIGNATURE, each part picked
# from its variants.


def topic(name: str, cat: str, product: str, asks: list[str], intro: list[str],
          close: list[str], *, slots: dict | None = None, steps: list | None = None,
          body: list | None = None, n: int = UNITS_PER_TOPIC) -> dict:
    """Return a topic definition (a plain dict)."""
    return {"name": name, "cat": cat, "product": product, "asks": asks, "intro": intro,
            "close": close, "slots": slots or {}, "steps": steps, "body": body, "n": n}


BILLING = [
    topic("update_payment", "billing", "Billing",
          slots={"method": ["a new Visa card", "a Mastercard", "PayPal",
                            "an American Express card", "a company credit card"]},
          asks=["How do I switch my payment method to {method}?",
                "My old card expired. Where can I add {method} instead?",
                "I want to pay with {method} from now on, how do I change it?",
                "Can I update the card on file? I'd like to use {method}.",
                "where do i change billing info, want to use {method}",
                "Is it possible to move my subscription payments over to {method}?"],
          intro=["You can change the payment method yourself in a couple of minutes.",
                 "Updating your payment details only takes a moment.",
                 "Here is how to move your subscription to {method}."],
          steps=[["Sign in at app.northwind.cloud and open Settings > Billing.",
                  "In the web app, go to Settings > Billing (payment details are edited on "
                  "the web only)."],
                 ["Click Payment method > Replace and choose {method}.",
                  "Select Change payment method and enter the details for {method}."],
                 ["Save, and the new method is used from your next renewal.",
                  "Confirm with Save; we run a $0 authorization to verify it, which disappears "
                  "within a few days."]],
          close=["Your plan and files are not affected by the change.",
                 "If the old card had a failed charge, we retry it on the new method within "
                 "24 hours.",
                 "You'll get a confirmation email once the change is saved."]),
    topic("double_charge", "billing", "Billing",
          slots={"p": PAID, "when": ["this month", "on my last renewal", "yesterday",
                                     "in March", "this week"]},
          asks=["I was charged twice for my {plan} plan {when}. Can you fix this?",
                "Why do I see two charges from Northwind {when}?",
                "There are two identical Northwind payments on my statement {when}, and I "
                "only have one account.",
                "double charged {when}?? I'm on {plan}",
                "My bank shows Northwind billed me two times {when}. What happened?"],
          intro=["Two charges for one renewal usually mean one of them is a pending "
                 "authorization rather than a real payment.",
                 "Let's sort out that double charge.",
                 "A duplicate charge is something we can check and reverse quickly."],
          steps=[["Open Settings > Billing > Invoices in the web app and count the invoices "
                  "listed {when}.",
                  "In the web app, go to Settings > Billing > Invoices and compare them with "
                  "your bank statement."],
                 ["If there is only one invoice, the second line is a temporary hold that "
                  "your bank drops within 3 to 5 business days.",
                  "A single invoice means the extra line is an authorization hold, which your "
                  "bank releases on its own within a few business days."],
                 ["If there are two {plan} invoices, click Report a problem next to the second "
                  "one and we refund it in full.",
                  "If you really see two {plan} invoices, reply with both invoice numbers and "
                  "we refund the duplicate."]],
          close=["Refunds reach your card within 5 to 10 business days.",
                 "You'll get an email as soon as the duplicate is reversed.",
                 "Either way, you only pay once for this billing period."]),
    topic("invoice", "billing", "Billing",
          slots={"month": ["January", "March", "June", "September", "November"],
                 "n": [{"need": "a VAT invoice", "need_a": "a VAT invoice"},
                       {"need": "an invoice with my company name",
                        "need_a": "an invoice with your company name"},
                       {"need": "a receipt for my expense report",
                        "need_a": "a receipt for your expense report"},
                       {"need": "a PDF invoice", "need_a": "a PDF invoice"}]},
          asks=["Where can I download {need} for {month}?",
                "I need {need} for {month}, how do I get one?",
                "My accountant is asking for {need}. Can you send one for {month}?",
                "how to get {need} ({month})",
                "Can I add our tax ID to {need}? It's for the {month} payment."],
          intro=["All invoices are in your account, and you can edit the billing details "
                 "yourself.",
                 "You can download {need_a} directly from the web app.",
                 "Getting {need_a} takes just a few clicks."],
          steps=[["Sign in at app.northwind.cloud and go to Settings > Billing > Invoices.",
                  "Open the web app and choose Settings > Billing, then the Invoices tab."],
                 ["Click Billing details to add your company name, address and VAT or tax ID.",
                  "Use Edit billing details first if a company name or tax ID should appear on "
                  "it."],
                 ["Find the {month} invoice in the list and click Download PDF.",
                  "Select the invoice for {month} and choose Download PDF; it is regenerated "
                  "with your current details."]],
          close=["Past invoices are updated too, so you can download them again at any time.",
                 "Every invoice is also emailed to the account owner when it's issued.",
                 "Invoices are kept in your account for seven years."]),
    topic("annual_switch", "billing", "Billing", slots={"p": PAID},
          asks=["Can I switch my {plan} plan from monthly to yearly billing?",
                "Is there a discount if I pay for {plan} annually?",
                "How much is {plan} if I pay once a year?",
                "i'd like to go annual on {plan}, what happens to this month's payment",
                "Thinking about moving {plan} to annual billing. How does that work?"],
          intro=["Yes, annual billing is available on every paid plan and works out to two "
                 "months free.",
                 "Switching {plan} to annual billing saves you two months compared with paying "
                 "monthly.",
                 "Annual billing for {plan} costs {yearly} instead of {price}."],
          steps=[["Go to Settings > Billing > Billing cycle in the web app.",
                  "In the web app, open Settings > Billing and find Billing cycle."],
                 ["Choose Annual; the price for {plan} is {yearly}.",
                  "Pick Annual and confirm the new price of {yearly}."],
                 ["We credit the unused part of your current month, so you never pay twice for "
                  "the same days.",
                  "The unused days of this month are credited against the first annual "
                  "charge."]],
          close=["You can switch back to monthly billing at your next renewal.",
                 "Your storage and settings stay exactly the same.",
                 "The new cycle starts the day you switch."]),
    topic("payment_failed", "billing", "Billing",
          slots={"p": PAID, "reason": ["my card expired", "my bank blocked the payment",
                                       "I didn't have enough funds at the time",
                                       "I changed banks"]},
          asks=["My payment for {plan} failed because {reason}. Will I lose my files?",
                "Got an email saying my Northwind payment failed, {reason}. What now?",
                "Payment declined on my {plan} subscription ({reason}). How do I fix it?",
                "what happens if my renewal fails? {reason}",
                "My {plan} renewal didn't go through since {reason}. Is my account suspended?"],
          intro=["A failed payment doesn't delete anything, and it's easy to fix.",
                 "Don't worry, your files are safe while we sort out the payment.",
                 "When a renewal fails we keep your {plan} plan running for a grace period."],
          steps=[["We retry the charge three times over 7 days, and your plan keeps working "
                  "meanwhile.",
                  "During the 7-day grace period we retry the payment three times and nothing "
                  "changes for you."],
                 ["To fix it now, update your card under Settings > Billing > Payment method.",
                  "Add a working card or PayPal under Settings > Billing > Payment method."],
                 ["Then click Retry payment on the Billing page to settle the balance right "
                  "away.",
                  "Click Retry payment so the outstanding {plan} invoice is paid immediately."]],
          close=["If all retries fail the account becomes read-only, and your files are kept "
                 "for 90 days.",
                 "After 7 days without payment the account turns read-only, but files stay "
                 "for 90 days.",
                 "Your files, links and settings are untouched the whole time."]),
]

PLANS = [
    topic("upgrade", "plans", "Billing",
          slots={"u": [
              {"old": "Free", "new": "Personal", "new_price": "$4.99 a month",
               "new_storage": "500 GB"},
              {"old": "Free", "new": "Plus", "new_price": "$9.99 a month",
               "new_storage": "2 TB"},
              {"old": "Personal", "new": "Plus", "new_price": "$9.99 a month",
               "new_storage": "2 TB"},
              {"old": "Team", "new": "Business", "new_price": "$15 per user a month",
               "new_storage": "5 TB per user"},
              {"old": "Plus", "new": "Team", "new_price": "$8 per user a month",
               "new_storage": "1 TB per user"}]},
          asks=["How do I upgrade from {old} to {new}?",
                "I'm running out of space on {old}. What do I get with {new}?",
                "Want to move up to {new} from {old}, is it immediate?",
                "upgrade {old} -> {new}, do I pay the full price today?",
                "What's the cost to go from {old} to {new}?"],
          intro=["Upgrading takes effect immediately.",
                 "Moving from {old} to {new} gives you {new_storage} of storage.",
                 "Good news: the upgrade is instant and prorated."],
          steps=[["Open Settings > Plan in the web app or the desktop app.",
                  "Go to Settings > Plan, either on the web or in Northwind Desktop."],
                 ["Select {new} ({new_price}) and click Upgrade.",
                  "Choose {new} at {new_price} and confirm with Upgrade."],
                 ["You pay only the prorated difference for the rest of this billing period.",
                  "We charge just the prorated difference today and the full price from the "
                  "next renewal."]],
          close=["The extra storage shows up within a minute.",
                 "All your files, links and settings carry over unchanged.",
                 "You can change plans again whenever you like."]),
    topic("downgrade", "plans", "Billing",
          slots={"d": [{"old": "Plus", "new": "Personal", "new_storage": "500 GB"},
                       {"old": "Personal", "new": "Free", "new_storage": "5 GB"},
                       {"old": "Plus", "new": "Free", "new_storage": "5 GB"},
                       {"old": "Business", "new": "Team", "new_storage": "1 TB per user"}]},
          asks=["If I downgrade from {old} to {new}, what happens to my files?",
                "I'd like to go back to {new} from {old}.",
                "How do I downgrade to {new}? I'm using more than {new_storage}.",
                "Can I drop from {old} to {new} without losing anything?",
                "downgrade to {new} pls, {old} is too expensive for me"],
          intro=["You can downgrade at any time, and nothing is deleted.",
                 "Downgrading from {old} to {new} takes effect at the end of your current "
                 "billing period.",
                 "Here's how the downgrade works."],
          steps=[["Go to Settings > Plan and choose Change plan.",
                  "Open Settings > Plan in the web app and click Change plan."],
                 ["Select {new} and confirm; you keep {old} until the end of the period you "
                  "already paid for.",
                  "Pick {new}; the change applies at your next renewal date."],
                 ["If you use more than {new_storage}, your files stay but syncing pauses until "
                  "you're back under the limit.",
                  "Over the {new_storage} limit the account goes read-only: files remain "
                  "viewable, but new uploads wait until you free up space."]],
          close=["You can upgrade again later and everything picks up where it left off.",
                 "Features like Vault or Rewind switch off if {new} doesn't include them.",
                 "We'll email you a reminder a week before the change happens."]),
    topic("compare_plans", "plans", "Billing",
          slots={"f": [
              {"feature": "Vault", "Feature": "Vault", "has": "Plus, Team and Business",
               "desc": "keeping sensitive files in an end-to-end encrypted folder",
               "trial": "a 14-day Plus trial"},
              {"feature": "Rewind", "Feature": "Rewind", "has": "Plus, Team and Business",
               "desc": "rolling your whole account back to an earlier point in time",
               "trial": "a 14-day Plus trial"},
              {"feature": "password-protected links", "Feature": "Password-protected links",
               "has": "Plus, Team and Business",
               "desc": "sharing files that only people with the password can open",
               "trial": "a 14-day Plus trial"},
              {"feature": "the admin console", "Feature": "The admin console",
               "has": "Team and Business",
               "desc": "managing members, seats and sharing policies in one place",
               "trial": "a 14-day Team trial"},
              {"feature": "single sign-on", "Feature": "Single sign-on", "has": "Business",
               "desc": "signing in through Okta, Azure AD or Google Workspace",
               "trial": "a 14-day Business trial"},
              {"feature": "180 days of version history", "Feature": "180 days of version "
               "history", "has": "Plus and Team (Business keeps 365 days)",
               "desc": "restoring older versions of a file long after a change",
               "trial": "a 14-day Plus trial"}]},
          asks=["Which plans include {feature}?",
                "Does the Personal plan come with {feature}?",
                "I'm on Free. Do I get {feature}, or do I need to upgrade?",
                "is {feature} available on every plan",
                "What plan do I need for {feature}?"],
          intro=["{Feature} is included in {has}.",
                 "You get {feature} on {has}.",
                 "{Feature} comes with {has}."],
          body=[["It is designed for {desc}.", "It's meant for {desc}.",
                 "People mostly use it for {desc}."],
                ["Free and Personal don't include it, but you can start {trial} from "
                 "Settings > Plan to try it.",
                 "If your plan doesn't have it, Settings > Plan lets you start {trial} with no "
                 "commitment.",
                 "To test it first, start {trial} under Settings > Plan."]],
          close=["The full comparison table is on the Plans page at northwind.cloud/pricing.",
                 "Your current plan is shown at the top of Settings > Plan.",
                 "If you upgrade, it's available right away on all your devices."]),
    topic("quota_full", "plans", "Northwind Web",
          slots={"p": INDIVIDUAL, "where": ["on my laptop", "on my phone", "in the web app",
                                            "in the desktop app"]},
          asks=["I keep getting error NW-412 {where}. I'm on {plan}.",
                "It says my storage is full but I deleted a lot of files. ({plan} plan)",
                "Storage full on {plan}, what are my options?",
                "NW-412 storage quota exceeded {where} - what does it mean?",
                "Why can't I upload anything anymore {where}? It says quota exceeded."],
          intro=["Error NW-412 means the account has reached the {storage} limit of {plan}.",
                 "That message means your {plan} storage ({storage}) is full.",
                 "Uploads stop when an account is over its quota, which is {storage} on "
                 "{plan}."],
          steps=[["Empty the trash in the web app under Trash > Empty trash, because deleted "
                  "files count until then.",
                  "Deleted files keep using space until you empty Trash in the web app."],
                 ["Check Settings > Storage to see which folders use the most space, including "
                  "old versions.",
                  "Open Settings > Storage for a breakdown by folder and file type."],
                 ["If you still need room, upgrade under Settings > Plan and uploads resume "
                  "right away.",
                  "Otherwise, a bigger plan from Settings > Plan lifts the limit "
                  "immediately."]],
          close=["Nothing is deleted while you're over quota; only new uploads pause.",
                 "Syncing restarts on its own once you're under the limit.",
                 "Files shared with you by others don't count against your quota."]),
    topic("team_seats", "plans", "Northwind Web",
          slots={"num": ["two", "three", "five", "ten"], "plan": ["Team", "Business"]},
          asks=["How do I add {num} more seats to our {plan} account?",
                "We hired {num} people, how do I get them on our {plan} plan?",
                "Can I remove {num} seats from {plan}? Some people left the company.",
                "What does it cost to add {num} users on {plan}?",
                "as the admin how do i invite {num} new members to our {plan} workspace"],
          intro=["Seats are managed by workspace admins in the admin console.",
                 "Changing {num} seats on {plan} is done in the admin console.",
                 "Admins can add or remove seats on {plan} at any time."],
          steps=[["Open the admin console at app.northwind.cloud/admin and go to Members.",
                  "Sign in as an admin and open Admin console > Members."],
                 ["Click Invite members to add people; each new seat is billed prorated for "
                  "the rest of the period.",
                  "Use Invite members to add seats, or the menu next to a member to remove "
                  "one."],
                 ["Removed seats are credited at your next renewal, and the member's files can "
                  "be transferred to another user first.",
                  "When you remove someone, transfer their files to another member before "
                  "confirming."]],
          close=["Team needs at least three seats; Business has no minimum.",
                 "The new seat count shows on your next invoice.",
                 "Invited members get an email and can sign in right away."]),
]

REFUNDS = [
    topic("refund_request", "refunds", "Billing",
          slots={"p": PAID, "w": [
              {"when": "yesterday", "verdict": "That charge is within our 14-day window, so "
               "you qualify for a full refund.", "next": "The money is back on your card in "
               "5 to 10 business days."},
              {"when": "three days ago", "verdict": "Charges from the last 14 days are "
               "refunded in full, so you're covered.", "next": "You'll get an email once the "
               "refund is sent."},
              {"when": "last week", "verdict": "Good news: anything charged in the last 14 "
               "days can be refunded in full.", "next": "Banks usually post the refund within "
               "5 to 10 business days."},
              {"when": "two months ago", "verdict": "That charge is older than our 14-day "
               "refund window, so we can offer prorated account credit instead.",
               "next": "The credit is applied automatically to your next invoices."},
              {"when": "last month", "verdict": "Refunds are available for 14 days after a "
               "charge; for older ones we offer prorated account credit.",
               "next": "The credit covers the unused part of your billing period."}]},
          asks=["I was charged for {plan} {when} and I'd like a refund.",
                "Can I get my money back? The {plan} renewal went through {when}.",
                "refund please, didn't mean to renew {plan} ({when})",
                "Is it too late for a refund on the {plan} charge from {when}?",
                "I renewed {plan} {when} by mistake. Can I get a refund?"],
          intro=["{verdict}"],
          steps=[["Go to Settings > Billing > Invoices in the web app.",
                  "Open the web app and select Settings > Billing > Invoices."],
                 ["Click Request refund next to the {plan} invoice and pick a reason.",
                  "Choose the {plan} invoice and click Request refund."],
                 ["{next}"]],
          close=["If you'd rather keep {plan} until the end of the period, just cancel the "
                 "renewal instead.",
                 "Your files stay where they are either way.",
                 "Reply here if the button doesn't appear and we'll process it for you."]),
    topic("accidental_upgrade", "refunds", "Billing",
          slots={"plan": ["Plus", "Team", "Business", "Personal"],
                 "when": ["today", "yesterday", "an hour ago", "last night"]},
          asks=["I accidentally upgraded to {plan} {when}, can you undo it?",
                "Clicked upgrade to {plan} by mistake {when}. Please reverse it.",
                "oops, I upgraded to {plan} {when} and didn't mean to",
                "My kid upgraded our account to {plan} {when}. Can I get the money back?",
                "How do I cancel an upgrade to {plan} that I made {when}?"],
          intro=["Accidental upgrades are easy to reverse within 14 days.",
                 "No problem, an upgrade made {when} can be undone in full.",
                 "You can reverse the {plan} upgrade yourself."],
          steps=[["Open Settings > Plan in the web app and click Change plan.",
                  "In the web app, go to Settings > Plan and select Change plan."],
                 ["Switch back to your previous plan and choose Reverse upgrade when asked.",
                  "Pick your previous plan; the page offers Reverse upgrade because it's "
                  "within 14 days."],
                 ["The prorated {plan} charge is refunded to your original payment method "
                  "within 5 to 10 business days.",
                  "We refund the {plan} charge to the card or PayPal account it came from."]],
          close=["Your files and settings aren't affected.",
                 "To avoid surprises, you can require a password for plan changes under "
                 "Settings > Security.",
                 "You'll get a confirmation email once it's done."]),
    topic("cancel_subscription", "refunds", "Billing",
          slots={"p": PAID, "reason": ["money is tight right now",
                                       "we're moving to another provider",
                                       "I don't need the space anymore",
                                       "I'm closing my business"]},
          asks=["How do I cancel my {plan} subscription? {reason}.",
                "I want to cancel {plan} because {reason}.",
                "cancel my plan please, {reason}",
                "What happens to my files if I cancel {plan}? {reason}.",
                "Where's the cancel button? I'm on {plan} and {reason}."],
          intro=["You can cancel at any time, and nothing is deleted.",
                 "Canceling {plan} only takes a minute.",
                 "Here's how to cancel and what happens afterwards."],
          steps=[["Go to Settings > Plan in the web app and click Cancel subscription.",
                  "In the web app, open Settings > Plan and choose Cancel subscription."],
                 ["Confirm the cancellation; {plan} stays active until the end of the period "
                  "you paid for.",
                  "After you confirm, {plan} keeps working until your paid period ends."],
                 ["Then the account moves to Free with 5 GB, and files over the limit become "
                  "read-only.",
                  "From then on you're on Free (5 GB); anything beyond that stays readable but "
                  "stops syncing."]],
          close=["If you want a copy of everything first, the Export Center under Settings > "
                 "Account can package your files.",
                 "You can resubscribe at any time and pick up where you left off.",
                 "Charges from the last 14 days can still be refunded if you ask."]),
    topic("refund_status", "refunds", "Billing",
          slots={"when": ["last Monday", "a week ago", "five days ago", "ten days ago"],
                 "m": [{"method": "credit card", "wait": "5 to 10 business days"},
                       {"method": "debit card", "wait": "5 to 10 business days"},
                       {"method": "PayPal account", "wait": "3 to 5 business days"}]},
          asks=["I was promised a refund {when} but it's not on my {method} yet.",
                "Where is my refund? I requested it {when}.",
                "How long do refunds take to show up on a {method}?",
                "refund still pending since {when}, any update?",
                "Can you check the status of the refund I requested {when}?"],
          intro=["Refunds are sent the day we approve them, but banks take a little while to "
                 "post them.",
                 "Let's check where that refund is.",
                 "A refund to a {method} usually takes {wait} to appear."],
          steps=[["Check Settings > Billing > Invoices; a refunded invoice shows the label "
                  "Refunded with the date it was sent.",
                  "Open Settings > Billing > Invoices and look for the Refunded label on the "
                  "invoice."],
                 ["Allow {wait} for a {method} from the date shown there.",
                  "For a {method}, the usual time is {wait} after that date."],
                 ["If it has been longer, reply with the invoice number and we'll send you the "
                  "bank reference to trace it.",
                  "Past that, send us the invoice number and we'll give you a reference your "
                  "bank can trace."]],
          close=["Refunds always go back to the method that was charged.",
                 "The refund shows on your statement as Northwind Cloud.",
                 "Thanks for your patience while the bank processes it."]),
]

ACCOUNT = [
    topic("reset_password", "account", "Account",
          slots={"where": ["the web app", "the desktop app", "the iPhone app",
                           "the Android app"]},
          asks=["I forgot my password. How do I reset it from {where}?",
                "How can I reset my Northwind password in {where}?",
                "The password reset email never arrives. I'm trying from {where}.",
                "cant remember my password and {where} keeps rejecting it",
                "Need to change my password, where is that option in {where}?"],
          intro=["You can reset your password from any device in a few steps.",
                 "Resetting your password only takes a minute.",
                 "Here's how to get a new password set up from {where}."],
          steps=[["On the sign-in screen in {where}, click or tap Forgot password.",
                  "Open {where}, and on the sign-in screen choose Forgot password."],
                 ["Enter your account email; the reset link arrives within a few minutes and "
                  "is valid for one hour.",
                  "Type the address you signed up with and we'll send a link that works for "
                  "one hour."],
                 ["If the email doesn't show up, check your spam folder and the spelling of "
                  "the address.",
                  "No email after ten minutes? Look in spam or promotions, then request a new "
                  "link."],
                 ["Choose a new password of at least 10 characters; your other devices sign "
                  "out automatically.",
                  "Pick a new password (10 characters or more) and sign in again on your "
                  "other devices."]],
          close=["Your files and settings are not affected.",
                 "If you use two-factor authentication, you'll still need your code after the "
                 "reset.",
                 "Signed in already? Settings > Security > Password changes it directly."]),
    topic("change_email", "account", "Account",
          slots={"why": ["I'm leaving my job", "we rebranded",
                         "my old email provider shut down",
                         "I made a typo when signing up"]},
          asks=["How do I change the email address on my account? {why}.",
                "{why}, so I need to move my Northwind login to a new address.",
                "Can I update my login email? {why}.",
                "change account email address - {why}",
                "My email changed because {why}. How do I update it in Northwind?"],
          intro=["You can change the sign-in address yourself.",
                 "Changing the email on your account is quick.",
                 "Here's how to move your login to a new address."],
          steps=[["Go to Settings > Account > Email in the web app.",
                  "In the web app, open Settings > Account and click Email."],
                 ["Enter the new address and confirm with your current password.",
                  "Type the new address, then confirm the change with your password."],
                 ["Click the verification link we send to the new address; until then the old "
                  "one keeps working.",
                  "Verify the new address from the email we send it; the switch happens when "
                  "you click the link."]],
          close=["You don't need access to the old address for this.",
                 "Shared folders and links keep working after the change.",
                 "Invoices will go to the new address from then on."]),
    topic("locked_out", "account", "Account",
          slots={"where": ["the web app", "the desktop app", "my phone"],
                 "attempts": ["a few times", "too many times", "about ten times", "a lot"]},
          asks=["I entered my password wrong {attempts} and now {where} says my account is "
                "locked.",
                "Account locked after failed logins on {where}, how long do I have to wait?",
                "It says too many attempts on {where}. Help!",
                "locked out of my account, tried {attempts}",
                "Why is my account temporarily locked on {where}?"],
          intro=["For your security, we lock sign-in for 30 minutes after 10 failed attempts.",
                 "That lock is temporary and lifts on its own.",
                 "Too many wrong passwords trigger a short lock to protect your account."],
          steps=[["Wait 30 minutes; the lock lifts automatically and nothing else changes on "
                  "your account.",
                  "Give it 30 minutes, after which you can sign in again as usual."],
                 ["If you're unsure of the password, use Forgot password instead of guessing "
                  "again.",
                  "Rather than trying more passwords, reset it with Forgot password on the "
                  "sign-in screen."],
                 ["If you didn't make those attempts, change your password and turn on "
                  "two-factor authentication in Settings > Security.",
                  "Weren't those attempts yours? Change the password and enable two-factor "
                  "authentication under Settings > Security."]],
          close=["Syncing on devices that are already signed in continues during the lock.",
                 "We also email you whenever a lock happens.",
                 "Your files are safe the whole time."]),
    topic("delete_account", "account", "Account",
          slots={"plan": ["Free", "Personal", "Plus"],
                 "why": ["I don't use it anymore", "I have a duplicate account",
                         "I'm worried about privacy", "I'm switching services"]},
          asks=["How do I permanently delete my Northwind account? {why}.",
                "Please delete my account and all my data, {why}.",
                "I want to close my {plan} account completely.",
                "what happens to my files if I delete my {plan} account",
                "Can I delete my account while I still have an active {plan} subscription?"],
          intro=["You can delete the account yourself from the web app.",
                 "Deleting an account is permanent, so here's the safe order of steps.",
                 "Here's how account deletion works."],
          steps=[["If you're on a paid plan, cancel it first under Settings > Plan.",
                  "Cancel any paid subscription under Settings > Plan before you start."],
                 ["Go to Settings > Account > Delete account and confirm with your password.",
                  "Open Settings > Account, click Delete account and enter your password."],
                 ["Your files are kept for a 30-day grace period in case you change your mind, "
                  "then erased permanently.",
                  "We keep everything for 30 days in case it was a mistake, and then erase it "
                  "for good."]],
          close=["Export your files from the Export Center first, since nothing can be "
                 "recovered after the 30 days.",
                 "Shared links stop working as soon as you confirm.",
                 "You'll get an email confirming the deletion date."]),
    topic("lost_2fa_device", "account", "Account",
          slots={"method": ["authenticator app", "phone number for SMS codes",
                            "security key"],
                 "event": ["I lost my phone", "my phone was stolen", "I reset my phone",
                           "I got a new phone"]},
          asks=["{event} and now there's no way to get my two-factor code.",
                "How do I sign in without my {method}? {event}.",
                "2FA problem: {event}, how do I get back into Northwind?",
                "{event}. Is there a way to log in without the {method}?",
                "stuck at the two factor screen because {event}"],
          intro=["Recovery codes are made for exactly this situation.",
                 "You can still get in without your {method}.",
                 "Here's how to sign in and move two-factor to your new setup."],
          steps=[["On the two-factor screen, click Use a recovery code and enter one of the 10 "
                  "codes you saved when you set up 2FA.",
                  "Choose Use a recovery code on the two-factor screen; each of your 10 saved "
                  "codes works once."],
                 ["Once signed in, go to Settings > Security > Two-factor authentication and "
                  "set up your new {method}.",
                  "Then open Settings > Security > Two-factor authentication to register the "
                  "new {method}."],
                 ["Generate a fresh set of recovery codes there and store them somewhere safe.",
                  "Create new recovery codes while you're there and keep them offline."]],
          close=["Without recovery codes, use Account recovery on the sign-in page; the "
                 "identity check takes 2 to 3 business days.",
                 "If the phone was stolen, also sign it out under Devices & sessions.",
                 "Devices that are already signed in keep syncing meanwhile."]),
]

SECURITY = [
    topic("enable_2fa", "security", "Account",
          slots={"m": [
              {"method": "an authenticator app", "setup": "scan the QR code with an app such "
               "as Google Authenticator or 1Password and enter the 6-digit code."},
              {"method": "a security key", "setup": "insert or tap your YubiKey or other "
               "FIDO2 key when your browser asks."},
              {"method": "SMS codes", "setup": "enter your mobile number and type in the code "
               "we text you."}]},
          asks=["How do I turn on two-factor authentication with {method}?",
                "Can I use {method} for 2FA?",
                "I want to secure my account better. How do I set up {method}?",
                "setting up 2fa with {method}, where is it",
                "Does Northwind support {method} as a second factor?"],
          intro=["Yes, {method} works as a second factor on every plan.",
                 "Two-factor authentication is a great idea, and it takes two minutes.",
                 "Here's how to add {method} as your second factor."],
          steps=[["Go to Settings > Security > Two-factor authentication in the web app.",
                  "In the web app, open Settings > Security and click Two-factor "
                  "authentication."],
                 ["Choose {method} and follow the prompts: {setup}",
                  "Select {method}, then {setup}"],
                 ["Save the 10 recovery codes we show you; they're the only way back in if you "
                  "lose your second factor.",
                  "Download the 10 recovery codes and keep them somewhere other than your "
                  "phone."]],
          close=["From then on, new devices ask for the second factor at sign-in.",
                 "You can add a backup method on the same page.",
                 "Devices you're already signed in on stay signed in."]),
    topic("suspicious_login", "security", "Account",
          slots={"place": ["Brazil", "Germany", "Singapore", "Romania", "Canada", "Vietnam"]},
          asks=["I got an email about a new sign-in from {place}. That wasn't me!",
                "Someone logged into my account from {place}?",
                "New device login alert from {place}, should I worry?",
                "suspicious login {place} - what do i do",
                "There's a session from {place} in my account that I don't recognize."],
          intro=["Let's lock the account down right away.",
                 "A sign-in you don't recognize should be treated as a compromised password.",
                 "Good call reaching out about that sign-in from {place}."],
          steps=[["Change your password right away under Settings > Security > Password.",
                  "First set a new password in Settings > Security > Password."],
                 ["In Settings > Security > Devices & sessions, click Sign out next to the "
                  "session from {place}, or Sign out everywhere.",
                  "Open Devices & sessions on the same page and end the {place} session, or "
                  "use Sign out everywhere."],
                 ["Turn on two-factor authentication so a stolen password alone is no longer "
                  "enough.",
                  "Enable two-factor authentication to block sign-ins that only have your "
                  "password."]],
          close=["Then check Settings > Security > Activity for files shared or deleted "
                 "recently.",
                 "If you reuse that password elsewhere, change it there too.",
                 "Rewind can undo any changes the intruder made, if you're on Plus or higher."]),
    topic("vault_passphrase", "security", "Northwind Desktop",
          slots={"d": [{"device": "my new laptop", "device_a": "the new laptop"},
                       {"device": "my iPhone", "device_a": "your iPhone"},
                       {"device": "the web app", "device_a": "the web app"},
                       {"device": "my work computer", "device_a": "your work computer"}]},
          asks=["I forgot my Vault passphrase. Can you reset it?",
                "Is there any way to recover files in my Vault if I lost the passphrase?",
                "Vault won't unlock on {device}, I think I'm typing the passphrase right.",
                "can support open my vault? forgot the password",
                "What happens to my Vault if I forget the passphrase? Asking before I set it "
                "up on {device}."],
          intro=["Vault is end-to-end encrypted, so only your passphrase can unlock it, and we "
                 "never store it.",
                 "Vault uses zero-knowledge encryption: the passphrase never leaves your "
                 "devices.",
                 "Vault is built so that nobody but you can open it, including us."],
          body=[["That means Northwind staff have no way to reset it or open the files for "
                 "you.",
                 "Because of that, there is no reset or decryption on our side."],
                ["If you saved a Vault recovery kit during setup, choose Use recovery kit on "
                 "the Vault screen.",
                 "The one way back is the recovery kit: if you downloaded it, pick Use "
                 "recovery kit when unlocking."],
                ["Also check Caps Lock and the keyboard layout on {device_a}, since the "
                 "passphrase is case-sensitive.",
                 "On {device_a}, double-check the keyboard layout and Caps Lock; passphrases "
                 "are case-sensitive."]],
          close=["Files outside Vault are not affected.",
                 "Once you're in, create a new recovery kit under Vault > Settings.",
                 "Keep the recovery kit printed or in a password manager."]),
    topic("encryption_info", "security", "Account",
          slots={"r": [{"region": "the EU", "dcs": "Frankfurt and Dublin"},
                       {"region": "the US", "dcs": "Oregon and Virginia"}],
                 "concern": ["GDPR", "our compliance team", "a client contract",
                             "a security questionnaire"]},
          asks=["Are my files encrypted? I need to answer {concern}.",
                "Where is my data stored if I pick {region}? It's for {concern}.",
                "Do you encrypt data at rest and in transit? Asking for {concern}.",
                "Can I choose to keep my data in {region}?",
                "which data centers do you use in {region}"],
          intro=["Yes, every file is encrypted both in transit and at rest.",
                 "Short answer: encrypted everywhere, and stored in the region you choose.",
                 "Here's how we protect and store your files."],
          body=[["Files travel over TLS 1.3 and are stored with AES-256 encryption.",
                 "We use TLS 1.3 for every connection and AES-256 for stored data."],
                ["Accounts in {region} live in our {dcs} data centers, and the region is "
                 "chosen at sign-up.",
                 "If your account is in {region}, your files stay in {dcs}; Business admins "
                 "can request a region move."],
                ["For zero-knowledge encryption of sensitive folders, Vault is available on "
                 "Plus, Team and Business.",
                 "For files even we can't read, use Vault on Plus, Team or Business."]],
          close=["Our security whitepaper and DPA are in Settings > Security > Compliance.",
                 "Admins can download our SOC 2 report from the admin console.",
                 "Your account's region is shown under Settings > Account."]),
    topic("sign_out_devices", "security", "Account",
          slots={"d": [{"device": "an old laptop", "device_a": "the old laptop"},
                       {"device": "a phone I sold", "device_a": "the phone you sold"},
                       {"device": "my work PC", "device_a": "your work PC"},
                       {"device": "a library computer", "device_a": "the library computer"},
                       {"device": "my old tablet", "device_a": "your old tablet"}]},
          asks=["How do I sign out of Northwind on {device}?",
                "I'm still logged in on {device}. Can I log it out remotely?",
                "remove {device} from my account",
                "How can I see which devices are connected? I forgot to sign out of {device}.",
                "Is there a way to kick {device} off my account?"],
          intro=["You can sign out any device remotely.",
                 "Removing {device_a} from your account is done from the web app.",
                 "Here's how to end the session on {device_a}."],
          steps=[["Go to Settings > Security > Devices & sessions in the web app.",
                  "Open the web app and select Settings > Security > Devices & sessions."],
                 ["Find {device_a} in the list and click Sign out; the app there stops "
                  "syncing immediately.",
                  "Click Sign out next to {device_a}, which ends its session and stops sync."],
                 ["To be extra safe, tick Also delete local files, which removes the synced "
                  "copy the next time that device goes online.",
                  "Tick Also delete local files if you want the synced copy wiped when it "
                  "next connects."]],
          close=["If you think the password is known to someone else, change it too.",
                 "The list shows each device's last activity and location.",
                 "You'll need your password to sign in there again."]),
]

SYNC_CODES = [
    {"code": "NW-101", "meaning": "your sign-in session has expired",
     "fix1": ["Click {tray}, choose Sign out, then sign back in with your password.",
              "Sign out of Northwind Desktop from {tray} and sign in again."],
     "fix2": ["Make sure the clock on your {os} computer is set automatically, because a wrong "
              "time invalidates sessions.",
              "Check that the date and time on {os} are set automatically; a clock that's off "
              "causes this."]},
    {"code": "NW-204", "meaning": "a file is open in another program and locked",
     "fix1": ["Close the program that has the file open, such as Excel, Outlook or a photo "
              "editor.",
              "Save and close open documents, especially Office files and Outlook data files."],
     "fix2": ["Northwind retries locked files every few minutes, so the error clears once the "
              "file is closed.",
              "To see which file it is, open {tray} and look under Sync issues."]},
    {"code": "NW-307", "meaning": "a file path is longer than {os} allows",
     "fix1": ["Open {tray} and check Sync issues to see which file has the long path.",
              "Find the affected file under Sync issues in {tray}."],
     "fix2": ["Shorten the folder or file names, or move the file closer to the top of your "
              "Northwind folder.",
              "Rename deeply nested folders so the full path stays under 260 characters on "
              "Windows or 1,024 elsewhere."]},
    {"code": "NW-509", "meaning": "the same file was changed in two places at once",
     "fix1": ["Look for a file with (conflicted copy) in its name next to the original.",
              "Search your Northwind folder for files whose names contain conflicted copy."],
     "fix2": ["Compare the two versions, keep the one you want and delete the other.",
              "Merge the changes you need into one file and remove the extra copy."]},
    {"code": "NW-615", "meaning": "a file name has characters that {os} or the web app won't "
     "accept",
     "fix1": ["Rename files containing characters like colon, asterisk, question mark or pipe, "
              "or ending in a space or period.",
              "Remove special characters such as : * ? | from the file name, and any trailing "
              "space or dot."],
     "fix2": ["Sync issues in {tray} lists every affected file name.",
              "Open {tray} > Sync issues to get the full list of names to fix."]},
    {"code": "NW-720", "meaning": "the app couldn't reach our servers in time",
     "fix1": ["Check that your firewall, proxy or VPN allows connections to *.northwind.cloud "
              "on port 443.",
              "Make sure a VPN, proxy or firewall isn't blocking *.northwind.cloud on port "
              "443."],
     "fix2": ["Under Preferences > Network, set Proxy to Auto-detect and restart the app.",
              "In Preferences > Network, switch the proxy setting to Auto-detect, then quit "
              "and reopen Northwind."]},
    {"code": "NW-833", "meaning": "a folder chosen in Selective Sync was moved or deleted on "
     "this computer",
     "fix1": ["Click {tray} and open Preferences > Sync > Selective Sync.",
              "Open Selective Sync from {tray} under Preferences > Sync."],
     "fix2": ["Tick the missing folder again, or untick it if you no longer want it here.",
              "Select the folder again to restore it, or clear it if you meant to remove it."]},
    {"code": "NW-940", "meaning": "this computer has an outdated Vault key",
     "fix1": ["Open the Vault folder and unlock it with your Vault passphrase.",
              "Unlock Vault on this computer by entering your passphrase."],
     "fix2": ["If it keeps appearing, sign out and back in so the app downloads the current "
              "key.",
              "Still there? Signing out and in again refreshes the key on {os}."]},
]

SYNC = [
    topic("error_code", "sync_errors", "Northwind Desktop", n=30,
          slots={"c": SYNC_CODES, "o": DESKTOPS},
          asks=["Getting error {code} on {os}, what does it mean?",
                "Northwind Desktop shows {code} and stops syncing ({os}).",
                "What is error {code}? I'm on {os}.",
                "{code} keeps popping up on my {os} machine",
                "How do I fix sync error {code}? Running {os}."],
          intro=["Error {code} means {meaning}.",
                 "{code} appears when {meaning}.",
                 "That error, {code}, tells us {meaning}."],
          steps=[["{fix1}"], ["{fix2}"],
                 ["Then click {tray} and choose Resume sync.",
                  "Afterwards, open {tray} and pick Resume sync if it hasn't restarted on its "
                  "own."]],
          close=["Your other files keep syncing while one item has a problem.",
                 "Nothing is lost; the file syncs as soon as the issue is fixed.",
                 "If the code comes back, reply with the time it appeared and we'll check the "
                 "server side."]),
    topic("stuck_sync", "sync_errors", "Northwind Desktop",
          slots={"o": DESKTOPS, "status": ["Preparing", "Syncing 1 of 3,402 files",
                                           "Indexing", "Waiting"]},
          asks=["Northwind Desktop on {os} has been stuck on {status} for hours.",
                "My files aren't syncing, the app just says {status}.",
                "sync stuck at {status} on {os}",
                "Nothing uploads from my {os} computer anymore. Status says {status}.",
                "Why does Northwind never finish syncing? It's always {status}."],
          intro=["A sync that sits on {status} is usually waiting on one item.",
                 "Let's get your sync moving again.",
                 "When the status stays on {status}, these steps clear it in most cases."],
          steps=[["Click {tray} and choose Pause sync, wait ten seconds, then Resume sync.",
                  "Pause sync from {tray} and resume it after a few seconds."],
                 ["Check {tray} > Sync issues; a single problem file can hold up the queue.",
                  "Look under Sync issues in {tray} for a file that blocks the rest."],
                 ["If it's still stuck, quit and restart the app and let it rescan; large "
                  "folders can take up to an hour to index.",
                  "Otherwise quit Northwind Desktop, start it again and give the rescan time "
                  "to finish."]],
          close=["Make sure the disk on {os} has at least 1 GB free, since sync needs "
                 "temporary space.",
                 "Files already uploaded are safe while the app catches up.",
                 "The web app shows what has reached the cloud so far."]),
    topic("selective_sync", "sync_errors", "Northwind Desktop",
          slots={"o": DESKTOPS, "folder": ["Photos", "Archive", "Old Projects", "Videos",
                                           "Music"]},
          asks=["How do I stop the {folder} folder from downloading to my {os} laptop?",
                "Can I keep {folder} in the cloud only and not on my computer?",
                "My disk is full. Can Northwind sync only some folders to {os}?",
                "selective sync for {folder}?",
                "I only want certain folders on this {os} machine, not {folder}."],
          intro=["Selective Sync lets you choose which folders live on each computer.",
                 "You can keep {folder} online-only with Selective Sync.",
                 "Here's how to leave {folder} in the cloud."],
          steps=[["Click {tray} and open Preferences > Sync > Selective Sync.",
                  "Open Preferences > Sync from {tray} and click Selective Sync."],
                 ["Untick {folder} and click Update.",
                  "Clear the check box next to {folder}, then choose Update."],
                 ["The local copy is removed from this computer, but it stays in the cloud and "
                  "on your other devices.",
                  "This frees the space on {os} while {folder} stays in the cloud and on other "
                  "devices."]],
          close=["You can tick it again later to bring it back.",
                 "Files inside it remain available in the web app at any time.",
                 "Each computer keeps its own Selective Sync choices."]),
    topic("conflicted_copies", "sync_errors", "Northwind Desktop",
          slots={"filetype": ["spreadsheet", "Word document", "notes file", "presentation",
                              "project file"]},
          asks=["Why do I have files named conflicted copy in my folder?",
                "There are two versions of my {filetype} now, one says conflicted copy. Which "
                "one is right?",
                "We edited the same {filetype} and now there are duplicates. What happened?",
                "conflicted copy files everywhere, how do i stop this",
                "My coworker and I keep getting conflicted copies of a shared {filetype}."],
          intro=["A conflicted copy appears when the same file is edited on two devices before "
                 "either change has synced.",
                 "Conflicted copies are how we avoid losing anyone's edits.",
                 "Nothing is wrong with your {filetype}; both versions were kept."],
          steps=[["Open both files and compare them; the conflicted copy has the other device's "
                  "name in its file name.",
                  "Compare the two files; the one named conflicted copy came from the other "
                  "device."],
                 ["Keep the version you want, copy over any changes from the other, and delete "
                  "the extra copy.",
                  "Merge what you need into one {filetype} and delete the copy."],
                 ["To avoid it, let changes finish syncing before editing elsewhere, and use "
                  "Open in web for shared files.",
                  "Going forward, wait for the green check before switching devices, or "
                  "co-edit through Open in web."]],
          close=["Version history keeps both versions anyway, so nothing is lost.",
                 "This happens most with files kept open for a long time.",
                 "Office files edited through Open in web never conflict."]),
    topic("slow_sync", "sync_errors", "Northwind Desktop",
          slots={"o": DESKTOPS, "speed": ["really slow", "slower than my internet",
                                          "crawling", "taking days"],
                 "activity": ["Uploading", "Downloading", "The first sync"]},
          asks=["{activity} is {speed} on {os}. How can I speed it up?",
                "Why is Northwind so slow on my {os} computer? {activity} is {speed}.",
                "sync speed on {os} is {speed}, any tips",
                "{activity} from the desktop app is {speed}. Is there a limit?",
                "Is there a setting that throttles Northwind? {activity} is {speed}."],
          intro=["A few settings make a big difference to sync speed.",
                 "Let's make syncing on {os} faster.",
                 "Slow syncing usually comes down to limits or scanning."],
          steps=[["Open Preferences > Network in Northwind Desktop and set both upload and "
                  "download rate to No limit.",
                  "In Preferences > Network, remove any upload or download rate limit."],
                 ["Turn on LAN Sync so files come from other computers on your network "
                  "instead of the internet.",
                  "Enable LAN Sync in the same tab to copy files directly between computers "
                  "at home or in the office."],
                 ["Check whether a VPN or antivirus is inspecting the traffic; excluding the "
                  "Northwind folder often doubles the speed.",
                  "Exclude the Northwind folder from antivirus scanning and pause any VPN "
                  "while the first sync runs."]],
          close=["Many small files always sync slower than a few large ones.",
                 "The activity list in {tray} shows the current speed.",
                 "Once the first sync is done, only changes are transferred."]),
    topic("move_folder", "sync_errors", "Northwind Desktop",
          slots={"o": DESKTOPS, "target": ["an external drive", "a second SSD",
                                           "a bigger disk", "another user folder"]},
          asks=["How do I move my Northwind folder to {target} on {os}?",
                "Can the Northwind folder live on {target}?",
                "I want to put Northwind on {target}, do I need to download everything "
                "again?",
                "move northwind folder to {target}",
                "My system disk is full. Can I relocate the Northwind folder to {target}?"],
          intro=["The desktop app can move the folder for you.",
                 "Yes, the Northwind folder can live on {target}.",
                 "Moving the folder takes a few clicks and no re-download."],
          steps=[["Click {tray} and open Preferences > Sync.",
                  "Open Preferences > Sync from {tray}."],
                 ["Next to Folder location, choose Move and pick {target}.",
                  "Click Move beside Folder location and select {target}."],
                 ["Wait for the move to finish before unplugging anything; the app moves files "
                  "locally and doesn't re-upload them.",
                  "Let the app finish the move; it copies locally and nothing is uploaded "
                  "again."]],
          close=["External drives must stay connected, or syncing pauses.",
                 "Don't move the folder by hand in the file manager, or the app thinks "
                 "everything was deleted.",
                 "Selective Sync choices are kept after the move."]),
]

SHARING = [
    topic("create_link", "sharing", "Northwind Web",
          slots={"item": ["a folder of photos", "a PDF", "a video", "a project folder",
                          "a zip file"],
                 "x": [{"extra": "with a password", "setting": "turn on Require password",
                        "note": "Link passwords are available on Plus, Team and Business."},
                       {"extra": "that expires after a week", "setting": "set an expiry date",
                        "note": "Expiry dates are available on Plus, Team and Business."},
                       {"extra": "that works without an account",
                        "setting": "leave Who can open on Anyone with the link",
                        "note": "Recipients never need a Northwind account."},
                       {"extra": "that only allows viewing",
                        "setting": "turn off Allow downloads",
                        "note": "View-only links work on every plan."}]},
          asks=["How do I share {item} with someone using a link {extra}?",
                "Can I make a shared link {extra} for {item}?",
                "need a link to {item} {extra}",
                "What's the best way to send {item} to a client? Ideally a link {extra}.",
                "Is it possible to create a link {extra}? It's for {item}."],
          intro=["Shared links are the easiest way to send {item}.",
                 "You can create a link {extra} in a few clicks.",
                 "Here's how to share {item} with a link."],
          steps=[["In the web app or your Northwind folder, right-click it and choose Share > "
                  "Create link.",
                  "Right-click the item in the web app or on your computer and pick Share > "
                  "Create link."],
                 ["Open Link settings and {setting}.",
                  "Click Link settings, then {setting}."],
                 ["Copy the link and send it however you like.",
                  "Click Copy link and paste it into your message."]],
          close=["{note}",
                 "You can change or disable the link later under Shared > Links.",
                 "The link always shows the latest version of the file."]),
    topic("share_folder", "sharing", "Northwind Web",
          slots={"who": [{"person": "my accountant", "person_a": "your accountant"},
                         {"person": "a colleague", "person_a": "your colleague"},
                         {"person": "my family", "person_a": "your family"},
                         {"person": "a freelancer", "person_a": "the freelancer"},
                         {"person": "my sister", "person_a": "your sister"}],
                 "p": [{"perm": "edit", "perm_desc": "Can edit"},
                       {"perm": "only view", "perm_desc": "Can view"}]},
          asks=["How do I share a folder with {person} so they can {perm}?",
                "I want {person} to {perm} our shared folder. How?",
                "invite {person} to a folder ({perm})",
                "Can {person} {perm} my folder without seeing all my other files?",
                "What's the difference between sharing a folder and sending a link? I want "
                "{person} to {perm}."],
          intro=["Inviting people to a folder gives them ongoing access.",
                 "You can invite {person_a} to just that folder.",
                 "Folder invitations are the right tool when {person_a} should {perm}."],
          steps=[["Right-click the folder in the web app or Northwind Desktop and choose Share "
                  "> Invite people.",
                  "Choose Share > Invite people on the folder, in the web app or on your "
                  "computer."],
                 ["Enter their email address and set the permission to {perm_desc}.",
                  "Type their address and pick {perm_desc} as the permission."],
                 ["They get an invitation and see only that folder, nothing else in your "
                  "account.",
                  "Once they accept, the folder appears in their account and nothing else of "
                  "yours is visible."]],
          close=["Shared folders count against the owner's storage only.",
                 "You can change the permission or remove them at any time.",
                 "Links are better for one-off sends; invitations for ongoing work."]),
    topic("revoke_access", "sharing", "Northwind Web",
          slots={"p": [{"who": "a former employee", "who_a": "the former employee"},
                       {"who": "my ex", "who_a": "that person"},
                       {"who": "an old client", "who_a": "the old client"},
                       {"who": "a contractor whose project ended",
                        "who_a": "the contractor"}],
                 "w": [{"what": "a shared folder", "action": "click Manage access and "
                        "remove them"},
                       {"what": "a link I sent", "action": "click Disable link"},
                       {"what": "our team folder", "action": "click Manage access and remove "
                        "them"}]},
          asks=["How do I stop {who} from accessing {what}?",
                "I need to remove {who} from {what} right now.",
                "revoke access for {who} - it's {what}",
                "Can I take back {what} I gave to {who}?",
                "{who} still has access to {what}. How do I cut that off?"],
          intro=["You can remove access instantly.",
                 "Here's how to cut off {who_a}.",
                 "Taking back access takes a few seconds."],
          steps=[["Open Shared in the left sidebar of the web app.",
                  "In the web app, click Shared in the sidebar."],
                 ["Select {what} and {action}.",
                  "Find {what} in the list, then {action}."],
                 ["Access ends immediately; copies they already downloaded stay with them.",
                  "The change is instant, though files they already downloaded can't be "
                  "pulled back."]],
          close=["For anything sensitive, consider changing the content too.",
                 "Settings > Security > Activity shows what they opened recently.",
                 "They aren't notified when access is removed."]),
    topic("link_not_working", "sharing", "Northwind Web",
          slots={"pr": [
              {"symptom": "says it has expired", "cause": "the link had an expiry date",
               "fix": "Edit the link settings and pick a new expiry date, or create a new "
               "link."},
              {"symptom": "asks for a password", "cause": "the link is password-protected",
               "fix": "Send them the password separately, or turn off Require password in "
               "Link settings."},
              {"symptom": "shows a disabled message", "cause": "the link was turned off",
               "fix": "Create a fresh link from Share > Create link and send that instead."},
              {"symptom": "says the download limit was reached",
               "cause": "the file was downloaded very many times in one day",
               "fix": "Wait 24 hours for the limit to reset, or upgrade for higher limits."},
              {"symptom": "gives a not found page",
               "cause": "the file was moved, renamed or deleted",
               "fix": "Restore it from Trash or create a new link to its current location."}]},
          asks=["My client tells me the Northwind link I sent {symptom}.",
                "Why does my shared link {symptom}?",
                "shared link {symptom}, help",
                "The person I shared with tells me the link {symptom}. What should I do?",
                "A link I shared last month now {symptom}. Can you fix it?"],
          intro=["That usually means {cause}.",
                 "That happens when {cause}.",
                 "When a shared link {symptom}, the cause is almost always that {cause}."],
          body=[["{fix}"],
                ["You can see every link you've created under Shared > Links in the web app.",
                 "All your links and their settings are listed under Shared > Links.",
                 "Shared > Links in the web app shows the status of each link."]],
          close=["Recipients don't need an account to open links.",
                 "Changes to a link apply right away, with no need to resend.",
                 "Links always point to the latest version of the file."]),
]

EXPORT = [
    topic("export_all", "data_export", "Northwind Web",
          slots={"size": ["about 40 GB", "over 1 TB", "roughly 300 GB", "a few gigabytes"],
                 "r": [{"reason": "for a local backup", "reason_a": "for a local backup"},
                       {"reason": "before I cancel", "reason_a": "before you cancel"},
                       {"reason": "for an audit", "reason_a": "for an audit"},
                       {"reason": "to keep an offline copy",
                        "reason_a": "to keep an offline copy"}]},
          asks=["How can I download all my files at once {reason}? I have {size}.",
                "Is there a way to export everything from Northwind {reason}?",
                "I need a full export of my account ({size}) {reason}.",
                "download all files {reason}",
                "Can I get all {size} of my data as a zip {reason}?"],
          intro=["The Export Center packages your whole account for download.",
                 "A full export is built for exactly this.",
                 "Here's how to export everything {reason_a}."],
          steps=[["Go to Settings > Account > Export data in the web app to open the Export "
                  "Center.",
                  "Open the Export Center from Settings > Account > Export data."],
                 ["Choose Everything, or pick folders, and click Start export; large accounts "
                  "are split into zip archives of up to 50 GB.",
                  "Select Everything and Start export; we split it into 50 GB zip archives "
                  "if needed."],
                 ["We email you when the archives are ready; the download links stay valid "
                  "for 7 days.",
                  "You'll get an email when it's done, and the links work for 7 days."]],
          close=["With {size}, expect the export to take a few hours.",
                 "Folder structure and file dates are preserved in the archives.",
                 "Your files stay in your account after the export."]),
    topic("download_folder", "data_export", "Northwind Web",
          slots={"folder": ["Invoices", "Wedding photos", "Client work", "Lectures",
                            "Research"]},
          asks=["How do I download the {folder} folder as a zip?",
                "Can I download a whole folder from the web app? It's called {folder}.",
                "download {folder} folder all at once",
                "Is there a size limit for downloading a folder like {folder}?",
                "I need {folder} on a computer that doesn't have Northwind installed."],
          intro=["You can download any folder as a zip from the web app.",
                 "Downloading {folder} from the browser is simple.",
                 "Here's how to get {folder} without installing anything."],
          steps=[["Sign in at app.northwind.cloud and find the {folder} folder.",
                  "Open the web app and browse to {folder}."],
                 ["Click the menu next to it and choose Download; folders up to 20 GB are "
                  "zipped on the fly.",
                  "Choose Download from its menu, and we zip it for you if it's under 20 GB."],
                 ["For larger folders, use the Export Center or sync it with Northwind "
                  "Desktop.",
                  "Over 20 GB, the Export Center or the desktop app is the better route."]],
          close=["The zip keeps the folder structure intact.",
                 "Downloads don't remove anything from your account.",
                 "On a shared computer, remember to sign out afterwards."]),
    topic("migrate_away", "data_export", "Northwind Web",
          slots={"target": ["Google Drive", "Dropbox", "OneDrive", "a NAS at home",
                            "iCloud"]},
          asks=["We're moving to {target}. What's the easiest way to get our data out of "
                "Northwind?",
                "How do I transfer my files from Northwind to {target}?",
                "switching to {target}, how to export",
                "Before I cancel, how do I copy everything over to {target}?",
                "Is there a direct migration from Northwind to {target}?"],
          intro=["There's no direct transfer, but moving your files is straightforward.",
                 "We'll miss you; here's the cleanest way to move to {target}.",
                 "Two routes work well for moving to {target}."],
          steps=[["Start an export from Settings > Account > Export data to get all files as "
                  "zip archives with the folder structure.",
                  "Use the Export Center (Settings > Account > Export data) to download "
                  "everything as zip archives."],
                 ["Alternatively, let Northwind Desktop sync everything to a computer and "
                  "upload it to {target} from there.",
                  "Or sync it all to a computer with Northwind Desktop and add it to {target} "
                  "from that copy."],
                 ["Shared links and permissions don't transfer, so note who had access before "
                  "you cancel.",
                  "Sharing settings stay behind, so make a list of shared folders first."]],
          close=["Keep your plan active until the upload to {target} is verified.",
                 "Version history isn't included in exports, only current files.",
                 "Your data stays available until the end of your billing period."]),
    topic("gdpr_request", "data_export", "Account",
          slots={"law": ["GDPR", "the CCPA", "the UK GDPR", "Swiss data protection law"],
                 "w": [{"what": "all personal data you hold about me",
                        "what_a": "all the personal data we hold about you"},
                       {"what": "a copy of my account data",
                        "what_a": "a copy of your account data"},
                       {"what": "my sign-in history", "what_a": "your sign-in history"},
                       {"what": "my billing records", "what_a": "your billing records"}]},
          asks=["Under {law}, I'd like {what}.",
                "How do I request {what}? I'm asking under {law}.",
                "Can I get {what} as a file?",
                "{law} request: please send me {what}.",
                "Where do I ask for {what}?"],
          intro=["You can request {what_a} yourself.",
                 "Data requests are handled from your account settings.",
                 "Here's how to get {what_a}."],
          steps=[["Go to Settings > Privacy > Download my data in the web app.",
                  "In the web app, open Settings > Privacy and click Download my data."],
                 ["Click Request data; it covers your profile, sign-in history, billing "
                  "records and sharing activity.",
                  "Choose Request data to get your profile, sign-ins, billing and sharing "
                  "records in one archive."],
                 ["We email you a download link, usually within 48 hours and always within "
                  "the time {law} allows.",
                  "The archive is ready within 48 hours in most cases, well within what "
                  "{law} requires."]],
          close=["Your files themselves are exported separately from the Export Center.",
                 "The archive is JSON and CSV, so it opens in any spreadsheet tool.",
                 "For deletion requests, use Settings > Account > Delete account."]),
]

MOBILE = [
    topic("camera_upload", "mobile_app", "Northwind Mobile", slots={"ph": PHONES},
          asks=["Camera Upload stopped working on my {phone}.",
                "Photos aren't backing up from my {phone} anymore.",
                "Why does Camera Upload only work when I open the app? ({phone})",
                "camera uploads stuck on {phone}",
                "My new photos don't show up in Northwind. Using a {phone}."],
          intro=["Camera Upload depends on a couple of {phone_os} settings.",
                 "Let's get your photos backing up again.",
                 "On {phone_os}, Camera Upload usually stops because of a system setting."],
          steps=[["Open the Northwind app and check that Settings > Camera Upload is on.",
                  "In the Northwind app, make sure Camera Upload is switched on under "
                  "Settings."],
                 ["On your {phone}, {perm}, and turn off {power} while backing up.",
                  "Then {perm}; {power} also pauses uploads, so switch it off."],
                 ["Finally, {bg} so uploads continue in the background.",
                  "Also {bg}, otherwise uploads only run while the app is open."]],
          close=["Uploads resume from where they stopped.",
                 "The Camera Uploads folder in the web app shows what has arrived.",
                 "Large videos upload on Wi-Fi only unless you change that setting."]),
    topic("offline_files", "mobile_app", "Northwind Mobile",
          slots={"ph": PHONES, "why": ["I'm flying tomorrow", "I'll be somewhere without "
                                       "signal", "I commute on the subway",
                                       "I'm going camping"]},
          asks=["How do I keep files available on my {phone} without internet? {why}.",
                "{why}. Can I open Northwind files offline on my {phone}?",
                "offline access on {phone}?? {why}",
                "Is there an offline mode in the {phone} app?",
                "How do I download a folder to my {phone} for later? {why}."],
          intro=["Any file or folder can be made available offline.",
                 "Offline files are made for that.",
                 "You can take files offline on your {phone} ahead of time."],
          steps=[["In the Northwind app, tap the menu next to a file or folder and choose "
                  "Make available offline.",
                  "Tap the three dots beside the file or folder and select Make available "
                  "offline."],
                 ["Wait for the check mark, which shows the download is complete.",
                  "A check mark appears once it's fully downloaded."],
                 ["Offline files update when you're back online; manage them under Settings > "
                  "Offline files.",
                  "They refresh automatically when you reconnect, and Settings > Offline files "
                  "lists them all."]],
          close=["Offline files use space on your {phone}, so remove them when you're done.",
                 "Edits made offline sync as soon as you have a connection.",
                 "Offline folders also get new files added while you're online."]),
    topic("app_crash", "mobile_app", "Northwind Mobile",
          slots={"ph": PHONES, "when": ["as soon as I open it", "when I open a PDF",
                                        "after the last update", "when I scroll my photos"]},
          asks=["The Northwind app crashes {when} on my {phone}.",
                "App keeps closing on {phone} {when}.",
                "northwind keeps crashing {when}",
                "My {phone} app freezes and quits {when}. Any fix?",
                "Is there a known crash bug on {phone_os}? It happens {when}."],
          intro=["Crashes like this are usually fixed by an update or a clean reinstall.",
                 "That's frustrating; these steps fix most crashes.",
                 "Let's get the app stable on your {phone} again."],
          steps=[["Update the app from {store}; the latest release fixed several crashes on "
                  "{phone_os}.",
                  "Install the newest version from {store}, which includes crash fixes."],
                 ["Restart your {phone}, then open the app again.",
                  "Turn your {phone} off and on again before retrying."],
                 ["If it still crashes, uninstall and reinstall it; your files are in the "
                  "cloud, so only offline copies need downloading again.",
                  "Still crashing? Reinstall the app; nothing in the cloud is affected."]],
          close=["If it continues, reply with your {phone} model and app version so we can "
                 "investigate.",
                 "The web app works in your phone's browser in the meantime.",
                 "Crash reports are sent to us automatically if you allowed diagnostics."]),
    topic("mobile_data", "mobile_app", "Northwind Mobile",
          slots={"ph": PHONES, "amount": ["a lot of", "several gigabytes of", "too much",
                                          "half of"]},
          asks=["How do I stop Northwind from using mobile data on my {phone}?",
                "The app used {amount} my data plan this month.",
                "Can I make Camera Upload Wi-Fi only on my {phone}?",
                "northwind eating {amount} my mobile data",
                "Is there a setting to limit cellular data in the {phone} app?"],
          intro=["You can keep Northwind on Wi-Fi only.",
                 "Mobile data use is fully configurable in the app.",
                 "Here's how to stop the app using your data plan."],
          steps=[["Open the Northwind app and go to Settings > Mobile data.",
                  "In the app, tap Settings and then Mobile data."],
                 ["Turn off Use mobile data for uploads, and set Camera Upload to Wi-Fi only.",
                  "Switch off uploads over mobile data and choose Wi-Fi only for Camera "
                  "Upload."],
                 ["Files you open still download over mobile data unless you also turn on "
                  "Wi-Fi only downloads.",
                  "For downloads and previews, turn on Wi-Fi only downloads as well."]],
          close=["Offline files refresh only on Wi-Fi when these are set.",
                 "{phone_os} also lets you block data per app in its own settings.",
                 "Uploads waiting for Wi-Fi start as soon as you connect."]),
]

RECOVERY = [
    topic("restore_deleted", "file_recovery", "Northwind Web",
          slots={"p": PAID + INDIVIDUAL[:1],
                 "what": ["a folder", "some photos", "an important spreadsheet",
                          "a whole project folder"],
                 "when": ["last week", "yesterday", "earlier today", "a few days ago"]},
          asks=["I deleted {what} {when}. Can I get it back?",
                "Help, I accidentally deleted {what} from my computer and now it's gone from "
                "Northwind too.",
                "How do I restore {what} I removed {when}? I'm on {plan}.",
                "recover deleted {what}??",
                "Is there a trash or recycle bin? I need {what} I deleted {when}."],
          intro=["Deleted files go to Trash first, so this is fixable.",
                 "Good news: anything deleted {when} is still recoverable.",
                 "Here's how to restore {what}."],
          steps=[["Sign in at app.northwind.cloud and open Trash in the left sidebar.",
                  "In the web app, click Trash in the sidebar."],
                 ["Select the items and click Restore; they return to their original folder "
                  "on every device.",
                  "Tick what you need and choose Restore, which puts it back where it was."],
                 ["On {plan}, deleted files are kept for {history}, so anything from {when} is "
                  "still there.",
                  "{plan} keeps deleted files for {history}, which covers {when}."]],
          close=["Deleting on one device deletes everywhere, which is why Trash exists.",
                 "Restored files sync back to your computers automatically.",
                 "For many files at once, Rewind on Plus or higher is faster."]),
    topic("version_history", "file_recovery", "Northwind Web",
          slots={"p": PAID + INDIVIDUAL[:1],
                 "filetype": ["document", "spreadsheet", "presentation", "design file",
                              "text file"]},
          asks=["I overwrote a {filetype} with the wrong version. How do I go back?",
                "Can I restore an older version of a {filetype}? I'm on {plan}.",
                "How far back does version history go on {plan}?",
                "saved over my {filetype} by accident, can i undo",
                "Where do I find previous versions of a {filetype}?"],
          intro=["Version history keeps earlier copies of every file.",
                 "You can roll the {filetype} back to any earlier version.",
                 "Older versions of the {filetype} are kept automatically."],
          steps=[["In the web app, right-click the {filetype} and choose Version history.",
                  "Right-click the {filetype} in the web app and open Version history."],
                 ["Pick the version by date and click Restore; the current version is kept as "
                  "a newer entry, so nothing is lost.",
                  "Choose the version you want and select Restore; the one you replace stays "
                  "in the list."],
                 ["On {plan}, versions are kept for {history}.",
                  "Your {plan} plan keeps versions for {history}."]],
          close=["You can also preview a version before restoring it.",
                 "The restored version syncs to all your devices.",
                 "Desktop users can reach the same view by right-clicking the file."]),
    topic("rewind", "file_recovery", "Northwind Web",
          slots={"p": PAID[1:],
                 "cause": ["ransomware", "a script that renamed everything",
                           "someone deleting half the shared folder",
                           "a sync mistake that scrambled my folders"]},
          asks=["My files were hit by {cause}. Can I roll everything back?",
                "Is there a way to undo {cause} across thousands of files?",
                "We had {cause} this morning. How do we restore the whole account?",
                "{cause} - help, need everything back like it was yesterday",
                "Can Rewind fix {cause}? We're on {plan}."],
          intro=["Rewind can put the whole account back to a moment before the damage.",
                 "This is exactly what Rewind is for.",
                 "Yes, on {plan} you can rewind the account or a single folder."],
          steps=[["First disconnect the affected computer from the internet so the damage "
                  "stops syncing.",
                  "Take the affected computer offline right away so no more changes sync."],
                 ["In the web app, go to Settings > Rewind and pick a date and time just "
                  "before the problem started.",
                  "Open Settings > Rewind in the web app and choose a moment before it "
                  "happened."],
                 ["Confirm Rewind; it restores every file and folder to that moment, and later "
                  "changes stay in version history.",
                  "Start the rewind; files return to that point and nothing after it is "
                  "deleted from history."]],
          close=["Rewind on {plan} reaches back up to {history}.",
                 "You can rewind a single folder instead of the whole account.",
                 "Clean the affected computer before reconnecting it."]),
]

TOPICS = BILLING + PLANS + REFUNDS + ACCOUNT + SECURITY + SYNC + SHARING + EXPORT + MOBILE \
    + RECOVERY

# --- user prompt decoration -------------------------------------------------------------------
GREETINGS = ("", "", "", "", "Hi, ", "Hello, ", "Hey, ", "Hi there! ", "Hello Northwind team, ",
             "Good morning. ", "hi ")
EXTRAS = ("", "", "", "", "Thanks in advance!", "Any help appreciated.",
          "This is kind of urgent.", "Please help.", "Not sure where else to ask.",
          "I'm not very technical, so simple steps please.", "Thanks!", "Cheers.",
          "I couldn't find this in the help center.", "Appreciate it.")
QUESTION_WORDS = ("how", "what", "why", "is", "can", "does", "do", "where", "which", "are",
                  "any", "could")
FOLLOWUPS = ("Thanks, that worked. One more thing: {ask}", "Great, thank you! Also, {ask_lc}",
             "ok got it. {ask}", "Perfect. While I have you, {ask_lc}",
             "That fixed it, thanks. Another question: {ask}", "Thanks! And {ask_lc}")


def jaccard(a: frozenset, b: frozenset) -> float:
    """Return the Jaccard similarity of two sets (0.0 when both are empty)."""
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter) if a or b else 0.0


def shingles(text: str) -> frozenset:
    """Return the set of lowercase word trigrams of a text."""
    words = re.findall(r"\w+", text.lower())
    return frozenset(zip(words, words[1:], words[2:]))


def _typo(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if w.isalpha() and len(w) >= 5]
    if not candidates:
        return text
    i = rng.choice(candidates)
    w = words[i]
    j = rng.randrange(1, len(w) - 2)
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    return " ".join(words)


def _lower_first(text: str) -> str:
    keep = text.startswith(("I ", "I'", "NW", "Northwind")) or text[:2].isupper()
    return text if keep else text[:1].lower() + text[1:]


def _pick_slots(t: dict, rng: random.Random) -> dict:
    ctx: dict[str, str] = {}
    for name, options in t["slots"].items():
        value = rng.choice(options)
        if isinstance(value, dict):
            ctx.update({k: rng.choice(v) if isinstance(v, list) else v for k, v in value.items()})
        else:
            ctx[name] = value
    return {k: v.format(**ctx) if "{" in v else v for k, v in ctx.items()}


def _decorate(ask: str, rng: random.Random) -> str:
    extra = rng.choice(EXTRAS)
    if extra and ask[-1].isalnum():
        ask += "?" if ask.split()[0].lower() in QUESTION_WORDS else "."
    text = (rng.choice(GREETINGS) + ask + " " + extra).strip()
    return text.lower() if rng.random() < 0.1 else text


def render_answer(intro: str, steps: list[str] | None, body: list[str] | None,
                  close: str) -> str:
    """Return an answer in the house style: greeting, steps or body, close, signature."""
    if steps:
        middle = "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1))
        return f"{GREETING} {intro}\n\n{middle}\n\n{close}\n\n{SIGNATURE}"
    return f"{GREETING} {intro} {' '.join(body or [])}\n\n{close}\n\n{SIGNATURE}"


def render_unit(t: dict, rng: random.Random) -> dict:
    """Return one question and its house-style answer for a topic, with their parts."""
    ctx = _pick_slots(t, rng)
    ask = rng.choice(t["asks"]).format(**ctx)
    if rng.random() < 0.2:
        ask = _typo(ask, rng)
    steps = [rng.choice(v).format(**ctx) for v in t["steps"]] if t["steps"] else None
    body = [rng.choice(v).format(**ctx) for v in t["body"]] if t["body"] else None
    intro, close = (rng.choice(t[k]).format(**ctx) for k in ("intro", "close"))
    return {"topic": t["name"], "cat": t["cat"], "product": t["product"], "ask": ask,
            "prompt": _decorate(ask, rng), "intro": intro, "steps": steps, "body": body,
            "close": close, "answer": render_answer(intro, steps, body, close)}


def make_units(rng: random.Random) -> list[dict]:
    """Return clean units for every topic, each lexically far from the others of its category.

    Topics of different categories share little wording, so comparing within a category keeps
    this fast; tests check the whole files.
    """
    units: list[dict] = []
    seen: dict[str, list[tuple[frozenset, frozenset]]] = {c: [] for c in CATEGORIES}
    for t in TOPICS:
        made = tries = 0
        while made < t["n"]:
            tries += 1
            if tries > 60 * t["n"]:
                raise RuntimeError(f"topic {t['name']}: too few distinct units ({made})")
            unit = render_unit(t, rng)
            rs, ps = shingles(unit["prompt"] + " " + unit["answer"]), shingles(unit["prompt"])
            if not 40 <= len(unit["answer"].split()) <= 120 or not ps:
                continue
            if any(jaccard(rs, r) > ROW_MAX_JACCARD or jaccard(ps, p) > PROMPT_MAX_JACCARD
                   for r, p in seen[t["cat"]]):
                continue
            units.append(unit)
            seen[t["cat"]].append((rs, ps))
            made += 1
    return units


# --- rows -------------------------------------------------------------------------------------

def make_row(units: list[dict], rng: random.Random, *, system: bool | None = None,
             source: str | None = None) -> dict:
    """Return a chat row from one unit (single-turn) or several (follow-up turns)."""
    messages = []
    use_system = rng.random() < 0.35 if system is None else system
    if use_system:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    for i, u in enumerate(units):
        prompt = u["prompt"] if i == 0 else rng.choice(FOLLOWUPS).format(
            ask=u["ask"], ask_lc=_lower_first(u["ask"]))
        messages += [{"role": "user", "content": prompt},
                     {"role": "assistant", "content": u["answer"]}]
    return {"messages": messages, "category": units[0]["cat"], "product": units[0]["product"],
            "source": source or rng.choice(SOURCES), "_units": units}


class UnitQueue:
    """Hands out units without reuse, by category or weighted by what is left."""

    def __init__(self, units: list[dict], rng: random.Random) -> None:
        self.rng = rng
        shuffled = list(units)
        rng.shuffle(shuffled)
        self.by_cat = {c: deque(u for u in shuffled if u["cat"] == c) for c in CATEGORIES}

    def take(self, cat: str | None = None, k: int = 1) -> list[dict]:
        """Return k units of one category, each from a different topic."""
        if cat is None:
            cats = [c for c in CATEGORIES
                    if len({u["topic"]: 1 for u in self.by_cat[c]}) >= k]
            cat = self.rng.choices(cats, weights=[len(self.by_cat[c]) for c in cats])[0]
        queue, units = self.by_cat[cat], []
        while len(units) < k:
            unit = next(u for u in queue if u["topic"] not in {v["topic"] for v in units})
            queue.remove(unit)
            units.append(unit)
        return units

    def rows(self, n: int, n_multi: int, rng: random.Random, **kw: Any) -> list[dict]:
        """Return n rows, n_multi of them (at random positions) with 2 or 3 user turns."""
        multi = set(rng.sample(range(n), n_multi))
        return [make_row(self.take(k=(3 if rng.random() < 0.3 else 2) if i in multi else 1),
                         rng, **kw) for i in range(n)]


def make_eval(queue: UnitQueue, rng: random.Random) -> list[dict]:
    """Return EVAL_PER_CATEGORY rows per category; the first six categories get a multi-turn."""
    rows = []
    for ci, cat in enumerate(CATEGORIES):
        for j in range(EVAL_PER_CATEGORY):
            k = 2 if (j == 0 and ci < 6) else 1
            rows.append(make_row(queue.take(cat, k), rng, source="held_out"))
    rng.shuffle(rows)
    return rows


# --- planted defects --------------------------------------------------------------------------
PLACEHOLDERS = ("N/A", "<noinput>", "<No output>", "TODO", "TBD")
REFUSALS = (
    "As an AI language model, I cannot access your Northwind account or billing information. "
    "Please contact the company's support team directly.",
    "I'm sorry, but I can't help with that request.",
    "As an AI, I don't have the ability to view or change account settings. I recommend "
    "reaching out to customer support.",
    "I cannot assist with requests involving payment information.",
    "I'm just an AI assistant and I'm not able to provide support for specific products. "
    "Please consult the official documentation.",
    "Sorry, I am unable to answer questions about this topic.",
    "As an AI language model, I do not have access to real-time data, so I cannot "
    "troubleshoot this issue.",
    f"{GREETING} As an AI language model, I cannot guarantee the accuracy of this information. "
    f"Please verify with an authorized representative.\n\n{SIGNATURE}",
    "I apologize, but as an AI I cannot process refunds or access your files.",
    "I'm not able to help with that. Is there anything else I can do for you?",
)
MISSING_USER = (
    ("{prompt} I attached a screenshot of the error.", "attached a screenshot"),
    ("See the attached screenshot. {prompt}", "attached screenshot"),
    ("{prompt} The full log is pasted below.", "pasted below"),
    ("I followed the steps in the link below and it still doesn't work. {prompt}",
     "link below"),
    ("{prompt} Details are in the PDF I attached.", "PDF I attached"),
    ("As you can see in the image above, something is off. {prompt}", "image above"),
    ("{prompt} (screen recording attached)", "screen recording attached"),
)
MISSING_ASSISTANT = (
    ("Please follow the steps in the article linked below; it covers this for every platform "
     "and plan. Let us know if anything in it is unclear.", "linked below"),
    ("The fix is shown step by step in the screenshot attached to this reply. Follow it "
     "exactly and the problem should go away within a few minutes.", "screenshot attached"),
    ("I've listed the exact settings in the table below, so just copy them into the app, "
     "save, and restart it once.", "table below"),
)
CASUAL_OPENERS = ("oh that's easy: ", "yeah so ", "ok so basically ", "np, ", "sure thing - ",
                  "yep: ")
CASUAL_ENDERS = (", should be fine after that", " and you're done lol", ", that's it",
                 " :)", ". lmk if it still doesn't work", " and that should do it")
LOOP_LINE = "Please let me know if there is anything else I can help you with."
NEAR_EDITS = ("word_swap", "word_swap", "word_swap", "punctuation", "punctuation", "reorder",
              "reorder", "append", "append", "append", "truncate_prompt", "truncate_prompt")
WORD_SWAPS = (("click", "select"), ("choose", "pick"), ("Open", "Go to"), ("right away", "now"),
              ("immediately", "right away"), ("usually", "normally"), ("quick", "fast"),
              ("want", "need"), ("Check", "Verify"), ("Select", "Choose"))
APPENDS = (" Thanks again for the help.", " Just wanted to double-check.",
           " I appreciate the quick reply.", " Hope that makes sense.")
NON_ENGLISH = (
    ("es", "account", "Account",
     "Hola, olvidé mi contraseña y no me llega el correo para restablecerla. ¿Qué puedo hacer?",
     "¡Gracias por escribirnos! Revisa primero la carpeta de spam y asegúrate de usar el "
     "correo con el que te registraste. Después solicita un nuevo enlace desde la pantalla de "
     "inicio de sesión; el enlace es válido durante una hora.\n\n— Soporte de Northwind"),
    ("es", "refunds", "Billing",
     "Me cobraron ayer la renovación del plan Plus y quiero que me devuelvan el dinero.",
     "¡Gracias por contactarnos! Como el cargo es de los últimos 14 días, tienes derecho a un "
     "reembolso completo. Ve a Configuración > Facturación > Facturas y pulsa Solicitar "
     "reembolso junto a la factura. El dinero llegará a tu tarjeta en 5 a 10 días hábiles."),
    ("es", "sync_errors", "Northwind Desktop",
     "La aplicación de escritorio muestra el error NW-720 y no sincroniza nada. ¿Cómo lo "
     "soluciono?",
     "¡Hola! El error NW-720 significa que la aplicación no pudo conectar con nuestros "
     "servidores. Comprueba que el firewall, el proxy o la VPN permitan el acceso a "
     "*.northwind.cloud en el puerto 443 y reinicia la aplicación."),
    ("de", "billing", "Billing",
     "Hallo, mir wurde diesen Monat zweimal ein Betrag abgebucht. Können Sie das bitte prüfen?",
     "Danke für Ihre Nachricht! Öffnen Sie in der Web-App Einstellungen > Abrechnung > "
     "Rechnungen. Wenn dort nur eine Rechnung steht, ist die zweite Buchung eine Vormerkung, "
     "die Ihre Bank in wenigen Tagen löscht. Bei zwei Rechnungen erstatten wir die doppelte "
     "sofort.\n\n— Ihr Northwind Support-Team"),
    ("de", "security", "Account",
     "Wie aktiviere ich die Zwei-Faktor-Authentifizierung für mein Konto?",
     "Gehen Sie in der Web-App zu Einstellungen > Sicherheit > Zwei-Faktor-Authentifizierung, "
     "wählen Sie eine Authenticator-App und scannen Sie den QR-Code. Speichern Sie danach die "
     "zehn Wiederherstellungscodes an einem sicheren Ort."),
    ("de", "data_export", "Northwind Web",
     "Wie kann ich alle meine Dateien auf einmal herunterladen? Ich möchte kündigen.",
     "Danke für Ihre Anfrage! Öffnen Sie das Export Center unter Einstellungen > Konto > "
     "Daten exportieren und klicken Sie auf Export starten. Große Konten werden in ZIP-Archive "
     "von bis zu 50 GB aufgeteilt, und die Links sind sieben Tage gültig."),
    ("fr", "sharing", "Northwind Web",
     "Bonjour, comment partager un dossier avec un collègue pour qu'il puisse le modifier ?",
     "Merci de nous avoir contactés ! Faites un clic droit sur le dossier, choisissez Partager "
     "> Inviter des personnes, saisissez l'adresse de votre collègue et sélectionnez Peut "
     "modifier. Il ne verra que ce dossier.\n\n— L'équipe Support Northwind"),
    ("fr", "mobile_app", "Northwind Mobile",
     "Les photos de mon iPhone ne se sauvegardent plus. Que dois-je faire ?",
     "Vérifiez que le Chargement de la caméra est activé dans les réglages de l'application, "
     "donnez l'accès complet aux photos dans les Réglages d'iOS et désactivez le mode "
     "Économie d'énergie pendant la sauvegarde."),
    ("fr", "plans", "Billing",
     "Quelle est la différence entre les forfaits Personal et Plus ?",
     "Merci pour votre question ! Le forfait Personal offre 500 Go pour 4,99 $ par mois, et le "
     "forfait Plus offre 2 To, le coffre-fort Vault, Rewind et des liens protégés par mot de "
     "passe pour 9,99 $ par mois.\n\n— Support Northwind"),
)
_NAMES = ("jane.doe", "m.schmidt", "carlos.r", "priya.patel", "tom_baker", "lena.k")
_DOMAINS = ("gmail.com", "outlook.com", "yahoo.com", "proton.me", "acme-corp.com")


def luhn_check_digit(digits: str) -> str:
    """Return the Luhn check digit that makes digits + it a valid card number."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return str((10 - total % 10) % 10)


def fake_pii(kind: str, rng: random.Random) -> str:
    """Return a fake but realistic-looking PII string of the given kind."""
    if kind == "email":
        return f"{rng.choice(_NAMES)}{rng.randint(1, 99)}@{rng.choice(_DOMAINS)}"
    if kind == "phone":
        return rng.choice(("+1 (415) 555-0{}", "(503) 555-0{}", "+44 7700 900{}")).format(
            rng.randint(100, 199))
    if kind == "credit_card":
        digits = rng.choice("45") + "".join(rng.choice(string.digits) for _ in range(14))
        number = digits + luhn_check_digit(digits)
        return " ".join(number[i:i + 4] for i in range(0, 16, 4))
    if kind == "ipv4":
        return ".".join(str(rng.randint(a, b)) for a, b in ((23, 203), (0, 255), (0, 255),
                                                             (1, 254)))
    if kind == "openai_key":
        return "sk-" + "".join(rng.choice(string.ascii_letters + string.digits)
                               for _ in range(48))
    return "AKIA" + "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(16))


# (kind, side, sentence) for each planted PII row; {v} is the fake value.
PII_PLAN = (
    ("email", "user", "My login is {v}."),
    ("email", "user", "You can reply to {v} instead, that's my personal address."),
    ("email", "assistant", "I've checked the account registered to {v}."),
    ("phone", "user", "Feel free to call me at {v} if that's easier."),
    ("phone", "user", "My number on the account is {v}."),
    ("credit_card", "user", "The card on file is {v}, expiry 09/27."),
    ("credit_card", "user", "It was charged to my card {v}."),
    ("ipv4", "user", "I'm connecting from {v} on the office network, if that helps."),
    ("ipv4", "assistant", "I can see the last sign-in came from {v}."),
    ("openai_key", "user", "Here's the API key from our backup script: {v}"),
    ("openai_key", "user", "Not sure if related, but our integration uses the token {v}"),
    ("aws_key", "user", "Our nightly job also pushes to S3 with access key {v}"),
)


def _response_index(messages: list[dict]) -> int:
    return max(i for i, m in enumerate(messages) if m["role"] == "assistant")


def _first_user(messages: list[dict]) -> int:
    return next(i for i, m in enumerate(messages) if m["role"] == "user")


def _with(row: dict, index: int, content: str) -> dict:
    messages = [dict(m) for m in row["messages"]]
    messages[index]["content"] = content
    return {**row, "messages": messages}


def _copy(row: dict) -> dict:
    return {**row, "messages": [dict(m) for m in row["messages"]]}


def _sentences(text: str) -> list[str]:
    return re.split(r"(?<=[.!?])\s+", text.strip())


def near_duplicate(row: dict, edit: str, rng: random.Random) -> tuple[dict, str] | None:
    """Return a lightly edited copy of a row and what changed, or None if the edit can't apply."""
    msgs = row["messages"]
    u, a = _first_user(msgs), _response_index(msgs)
    prompt, answer = msgs[u]["content"], msgs[a]["content"]
    if edit == "word_swap":
        body = answer[len(GREETING):-len(SIGNATURE)]
        for old, new in WORD_SWAPS:
            if re.search(rf"\b{re.escape(old)}\b", body):
                body = re.sub(rf"\b{re.escape(old)}\b", new, body, count=1)
                return (_with(row, a, GREETING + body + SIGNATURE),
                        f"one word changed in the answer ('{old}' -> '{new}')")
        return None
    if edit == "punctuation":
        changed = prompt.replace(",", "").rstrip("?.!") + ("!!" if prompt.endswith("?") else "?")
        return _with(row, u, changed), "punctuation changed in the prompt"
    if edit == "reorder":
        parts = _sentences(prompt)
        if len(parts) < 2:
            return None
        parts[0], parts[1] = parts[1], parts[0]
        return _with(row, u, " ".join(parts)), "first two sentences of the prompt swapped"
    if edit == "append":
        extra = rng.choice(APPENDS)
        return _with(row, u, prompt + extra), f"sentence appended to the prompt: {extra.strip()!r}"
    parts = _sentences(prompt)
    if len(parts) < 2:
        words = prompt.split()
        if len(words) < 7:
            return None
        return _with(row, u, " ".join(words[:-2])), "prompt truncated (last two words dropped)"
    return _with(row, u, " ".join(parts[:-1])), "prompt truncated (last sentence dropped)"


def truncate_answer(answer: str, rng: random.Random) -> str:
    """Return the answer cut at a word boundary in the middle of a sentence."""
    lo, hi = int(len(answer) * 0.4), int(len(answer) * 0.75)
    cuts = [i for i in range(max(lo, len(GREETING) + 2), hi)
            if answer[i] == " " and answer[i - 1].isalpha()]
    return answer[:rng.choice(cuts)]


def overlong_answer(unit: dict, rng: random.Random) -> str:
    """Return a rambling answer that loops over its own steps and repeats a closing line."""
    points = unit["steps"] or unit["body"]
    loops = [f"{i}. {p}" for i, p in enumerate(points * rng.randint(5, 7), 1)]
    tail = "\n".join([LOOP_LINE] * rng.randint(8, 14))
    end = f"\n\n{SIGNATURE}" if rng.random() < 0.5 else ""
    return f"{GREETING} {unit['intro']}\n\n" + "\n".join(loops) + f"\n\n{tail}{end}"


def off_style_answer(unit: dict, rng: random.Random) -> str:
    """Return the same content as a casual reply with no greeting and no signature."""
    points = [_lower_first(p).rstrip(".") for p in (unit["steps"] or unit["body"])]
    return rng.choice(CASUAL_OPENERS) + "; then ".join(points) + rng.choice(CASUAL_ENDERS)


def entry(defect: str, row: dict, detail: str, *, of: dict | None = None,
          **extra: Any) -> dict:
    """Return a manifest entry; the line numbers are filled in once rows are placed."""
    return {"defect": defect, "row": row, "of": of, "detail": detail, **extra}


def plant_duplicates(clean: list[dict], rng: random.Random) -> list[dict]:
    """Return exact and near-duplicate entries of distinct clean train rows."""
    originals = rng.sample(range(len(clean)), len(clean))
    out = []
    for _ in range(DEFECT_COUNTS["exact_duplicate"]):
        row = clean[originals.pop()]
        out.append(entry("exact_duplicate", _copy(row), "identical copy", of=row))
    for edit in NEAR_EDITS:
        made = None
        while made is None:
            row = clean[originals.pop()]
            made = near_duplicate(row, edit, rng) if len(row["_units"]) == 1 else None
        out.append(entry("near_duplicate", made[0], made[1], of=row, edit=edit))
    return out


def plant_pii(carriers: list[dict], rng: random.Random) -> list[dict]:
    """Return PII entries: a fake email, phone, card, IP or key inserted into a clean row."""
    out = []
    for (kind, side, sentence), row in zip(PII_PLAN, carriers):
        value = fake_pii(kind, rng)
        said = sentence.format(v=value)
        msgs = row["messages"]
        if side == "user":
            i = _first_user(msgs)
            prompt = msgs[i]["content"]
            prompt += "." if prompt[-1].isalnum() else ""
            new = _with(row, i, f"{prompt} {said}")
        else:
            i = _response_index(msgs)
            new = _with(row, i, msgs[i]["content"].replace(GREETING, f"{GREETING} {said}", 1))
        out.append(entry("pii", new, f"{kind} in the {side} turn", planted=value,
                         pii_kind=kind))
    return out


def plant_bad_answers(carriers: list[dict], rng: random.Random) -> list[dict]:
    """Return placeholder, refusal, truncated, overlong and off-style entries."""
    out = []
    take = iter(carriers)
    for i in range(DEFECT_COUNTS["placeholder"]):
        row, text = next(take), PLACEHOLDERS[i % len(PLACEHOLDERS)]
        out.append(entry("placeholder", _with(row, _response_index(row["messages"]),
                                              text), f"response is {text!r}", planted=text))
    for i in range(DEFECT_COUNTS["refusal"]):
        row, text = next(take), REFUSALS[i]
        out.append(entry("refusal", _with(row, _response_index(row["messages"]), text),
                         "canned AI refusal or disclaimer instead of an answer", planted=text))
    for _ in range(DEFECT_COUNTS["truncated"]):
        row = next(take)
        text = truncate_answer(row["_units"][0]["answer"], rng)
        out.append(entry("truncated", _with(row, _response_index(row["messages"]), text),
                         f"answer cut mid-sentence after {len(text.split())} words, "
                         "no signature"))
    for _ in range(DEFECT_COUNTS["overlong"]):
        row = next(take)
        text = overlong_answer(row["_units"][0], rng)
        out.append(entry("overlong", _with(row, _response_index(row["messages"]), text),
                         f"{len(text.split())} words, steps and a closing line repeated"))
    for _ in range(DEFECT_COUNTS["off_style"]):
        row = next(take)
        text = off_style_answer(row["_units"][0], rng)
        out.append(entry("off_style", _with(row, _response_index(row["messages"]), text),
                         "right content, casual tone, no greeting and no signature"))
    return out


def plant_missing_context(carriers: list[dict], rng: random.Random) -> list[dict]:
    """Return rows that point at a screenshot, log or link the row doesn't contain."""
    out = []
    for row, (template, phrase) in zip(carriers, MISSING_USER):
        i = _first_user(row["messages"])
        text = template.format(prompt=row["messages"][i]["content"])
        out.append(entry("missing_context", _with(row, i, text),
                         "user refers to content that is not in the row", planted=phrase))
    for row, (text, phrase) in zip(carriers[len(MISSING_USER):], MISSING_ASSISTANT):
        answer = f"{GREETING} {text}\n\n{SIGNATURE}"
        out.append(entry("missing_context", _with(row, _response_index(row["messages"]),
                                                  answer),
                         "answer refers to content that is not in the row", planted=phrase))
    return out


def plant_non_english(rng: random.Random) -> list[dict]:
    """Return the hand-written Spanish, German and French rows."""
    names = {"es": "Spanish", "de": "German", "fr": "French"}
    out = []
    for lang, cat, product, user, answer in NON_ENGLISH:
        row = {"messages": [{"role": "user", "content": user},
                            {"role": "assistant", "content": answer}],
               "category": cat, "product": product, "source": rng.choice(SOURCES)}
        out.append(entry("non_english", row, f"{names[lang]} question and answer",
                         language=lang))
    return out


def plant_contamination(eval_rows: list[dict], rng: random.Random) -> list[dict]:
    """Return copies of single-turn eval rows (prompt and reference answer verbatim)."""
    single = [i for i, r in enumerate(eval_rows) if len(r["_units"]) == 1]
    out = []
    for i in sorted(rng.sample(single, DEFECT_COUNTS["contamination"])):
        row = {**_copy(eval_rows[i]), "source": rng.choice(SOURCES)}
        out.append(entry("contamination", row, f"copies support_eval.jsonl line {i + 1}",
                         eval_line=i + 1))
    return out


def place(clean: list[dict], entries: list[dict], rng: random.Random) -> list[dict]:
    """Return train rows with defects at random positions, each duplicate after its original."""
    index = {id(r): i for i, r in enumerate(clean)}
    keyed = [(float(i), 0, r) for i, r in enumerate(clean)]
    for n, e in enumerate(entries):
        lo = index[id(e["of"])] + 0.5 if e["of"] is not None else -0.5
        keyed.append((rng.uniform(lo, len(clean)), n + 1, e["row"]))
    keyed.sort(key=lambda k: (k[0], k[1]))
    return [r for _, _, r in keyed]


def manifest_entries(train: list[dict], entries: list[dict]) -> list[dict]:
    """Return the manifest list for the train file, sorted by line."""
    line = {id(r): i + 1 for i, r in enumerate(train)}
    out = []
    for e in entries:
        extra = {k: v for k, v in e.items() if k not in ("defect", "row", "of", "detail")}
        out.append({"line": line[id(e["row"])], "defect": e["defect"],
                    "duplicate_of_line": line[id(e["of"])] if e["of"] is not None else None,
                    "detail": e["detail"], **extra})
    return sorted(out, key=lambda d: d["line"])


# --- the messy import file --------------------------------------------------------------------

def as_shape(row: dict, shape: str, rng: random.Random) -> dict:
    """Return a single-turn row re-shaped as alpaca, sharegpt, prompt_completion or openai."""
    msgs = [m for m in row["messages"] if m["role"] != "system"]
    user, answer = msgs[0]["content"], msgs[1]["content"]
    meta = {"category": row["category"]}
    if shape == "alpaca":
        if rng.random() < 0.5:
            return {"instruction": "Answer this Northwind Cloud support ticket.", "input": user,
                    "output": answer, **meta}
        return {"instruction": user, "input": "", "output": answer, **meta}
    if shape == "sharegpt":
        return {"conversations": [{"from": "human", "value": user},
                                  {"from": "gpt", "value": answer}], **meta}
    if shape == "prompt_completion":
        pk, ck = rng.choice((("prompt", "completion"), ("question", "answer"),
                             ("prompt", "response")))
        return {pk: user, ck: answer, **meta}
    if shape == "openai_parts":
        return {"messages": [{"role": "user", "content": [{"type": "text", "text": user}]},
                             {"role": "assistant", "content": answer}], **meta}
    return {"messages": row["messages"], **meta}


MESSY_SHAPES = ("openai", "openai", "openai", "openai_parts", "alpaca", "alpaca", "alpaca",
                "alpaca", "alpaca", "sharegpt", "sharegpt", "sharegpt", "sharegpt", "sharegpt",
                "prompt_completion", "prompt_completion", "prompt_completion",
                "prompt_completion", "openai", "alpaca")
# (reason, shape to parse it as, field named by the RowError, raw line, detail)
_Q = "Why was I charged twice this month?"
_A = f"{GREETING} Open Settings > Billing > Invoices to compare.\n\n{SIGNATURE}"
MESSY_REJECTS = (
    ("bad_json", None, None,
     '{"messages": [{"role": "user", "content": "' + _Q + '"}, {"role": "assistant", '
     '"content": "Thanks for reaching out! Open Settings',
     "line cut off in the middle of a string"),
    ("bad_json", None, None,
     "{'instruction': 'How do I reset my password?', 'output': 'Use Forgot password.'}",
     "single quotes (a Python dict, not JSON)"),
    ("not_object", "openai", "(row)",
     orjson.dumps([{"role": "user", "content": _Q}, {"role": "assistant", "content": _A}]),
     "a JSON array of turns instead of an object (detect_shape finds no shape)"),
    ("missing_field", "alpaca", "output",
     orjson.dumps({"instruction": "How do I turn on two-factor authentication?", "input": ""}),
     "alpaca row without 'output' (detect_shape finds no shape; as alpaca: missing output)"),
    ("empty_content", "openai", "messages[1].content",
     orjson.dumps({"messages": [{"role": "user", "content": "How do I cancel my plan?"},
                                {"role": "assistant", "content": ""}]}),
     "assistant content is an empty string"),
    ("unknown_role", "openai", "messages[1].role",
     orjson.dumps({"messages": [{"role": "user", "content": "What does NW-204 mean?"},
                                {"role": "robot", "content": _A}]}),
     "role 'robot'"),
    ("wrong_type", "openai", "messages[1].content",
     orjson.dumps({"messages": [{"role": "user", "content": "What does error NW-412 mean?"},
                                {"role": "assistant", "content": 412}]}),
     "assistant content is a number"),
    ("wrong_type", "alpaca", "output",
     orjson.dumps({"instruction": "List the plans.", "input": "", "output": [1, 2, 3]}),
     "alpaca output is a list of ints"),
    ("no_assistant", "openai", "messages",
     orjson.dumps({"messages": [{"role": "system", "content": SYSTEM_PROMPTS[2]},
                                {"role": "user", "content": "Is my data encrypted?"}]}),
     "system and user turns only"),
)


def make_messy(rows: list[dict], rng: random.Random) -> tuple[bytes, dict]:
    """Return the messy import file and its manifest (valid, rejected and blank lines)."""
    lines: list[tuple[str, Any]] = [("valid", orjson.dumps(as_shape(r, s, rng)))
                                    for r, s in zip(rows, MESSY_SHAPES)]
    lines += [("reject", r) for r in MESSY_REJECTS]
    rng.shuffle(lines)
    lines.insert(rng.randrange(5, len(lines) - 5), ("blank", b""))
    out, valid, rejected, blank = [], [], [], []
    for n, (kind, item) in enumerate(lines, 1):
        if kind == "reject":
            reason, shape, field, raw, detail = item
            raw = raw.encode() if isinstance(raw, str) else raw
            rejected.append({"line": n, "reason": reason, "shape": shape, "field": field,
                             "detail": detail})
            item = raw
        else:
            (valid if kind == "valid" else blank).append(n)
        out.append(item)
    manifest = {"lines": len(out), "valid_lines": valid, "blank_lines": blank,
                "rejected": rejected}
    return b"\n".join(out) + b"\n", manifest


# --- writing ----------------------------------------------------------------------------------

def jsonl(rows: list[dict]) -> bytes:
    """Return rows as JSONL bytes, without the generator's private keys."""
    return b"".join(orjson.dumps({k: v for k, v in r.items() if not k.startswith("_")}) + b"\n"
                    for r in rows)


def build(rng: random.Random) -> dict[str, bytes]:
    """Return every output file's name and bytes."""
    queue = UnitQueue(make_units(rng), rng)
    eval_rows = make_eval(queue, rng)
    carriers = queue.rows(sum(DEFECT_COUNTS[k] for k in (
        "placeholder", "pii", "refusal", "truncated", "overlong", "off_style",
        "missing_context")), 0, rng)
    messy_rows = queue.rows(MESSY_VALID, 0, rng, system=False)
    pool = queue.rows(POOL_ROWS, 20, rng)
    clean = queue.rows(TRAIN_CLEAN, 38, rng)
    n_pii, n_ctx = DEFECT_COUNTS["pii"], DEFECT_COUNTS["missing_context"]
    entries = (plant_duplicates(clean, rng) + plant_pii(carriers[:n_pii], rng)
               + plant_missing_context(carriers[n_pii:n_pii + n_ctx], rng)
               + plant_bad_answers(carriers[n_pii + n_ctx:], rng) + plant_non_english(rng)
               + plant_contamination(eval_rows, rng))
    train = place(clean, entries, rng)
    messy, messy_manifest = make_messy(messy_rows, rng)
    defects = manifest_entries(train, entries)
    counts = {k: sum(d["defect"] == k for d in defects) for k in DEFECT_COUNTS}
    manifest = {
        "style": {"starts_with": GREETING, "ends_with": SIGNATURE, "min_words": 40,
                  "max_words": 120},
        "support_train.jsonl": {"rows": len(train), "counts": counts, "defects": defects},
        "messy_import.jsonl": messy_manifest,
    }
    return {"support_train.jsonl": jsonl(train), "support_eval.jsonl": jsonl(eval_rows),
            "support_pool.jsonl": jsonl(pool), "messy_import.jsonl": messy,
            "defects.json": orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n"}


def main(argv: list[str] | None = None) -> None:
    """Write the sample files into the folder given as the first argument (default: here)."""
    args = sys.argv[1:] if argv is None else argv
    out_dir = Path(args[0]) if args else HERE
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in build(random.Random(SEED)).items():
        (out_dir / name).write_bytes(data)


if __name__ == "__main__":
    main()
