"""AWS helpers of the rendezvous server: Route 53 self-registration (``route53``) and the
deployment secret's sources (``secret``). boto3 is imported only when an AWS call is made."""
