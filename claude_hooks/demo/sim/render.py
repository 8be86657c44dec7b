"""The JSON Forgejo sends for each record (services/convert/*.go, modules/structs/*.go).

Field names and types follow Forgejo's OpenAPI document (swagger.v1.json of Forgejo
17.0.0-dev, see tests/data/SPEC-SOURCE.md). Where Forgejo serialises a nil Go
pointer it sends null (milestone, closed_at, merged_by…), and so do we.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from claude_hooks.demo.sim.state import (
    SimComment,
    SimIssue,
    SimReaction,
    SimRepo,
    SimReview,
    SimReviewComment,
    SimState,
    SimStatus,
    SimThread,
    SimUser,
    access_level,
    has_access,
)

Json = dict[str, Any]
STATUS_PRIORITY = ("error", "failure", "warning", "pending", "success", "skipped")  # worst first


def worst_state(states: Iterable[str]) -> str:
    """CalcCommitStatus: the worst state, a later one winning ties; unknown states rank
    nowhere, so one counts only when nothing known came before it."""
    worst = ""
    for state in states:
        known = state in STATUS_PRIORITY and worst in STATUS_PRIORITY
        if not worst or (known and STATUS_PRIORITY.index(state) <= STATUS_PRIORITY.index(worst)):
            worst = state
    return worst


EPOCH = "1970-01-01T00:00:00Z"


def rfc3339(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment is not None else None


@dataclass(frozen=True)
class Renderer:
    base_url: str  # the web root, e.g. http://127.0.0.1:40123
    state: SimState

    @property
    def api(self) -> str:
        return f"{self.base_url}/api/v1"

    def user(self, user: SimUser | str) -> Json:
        if isinstance(user, str):
            user = self.state.user(user)
        return {
            "id": user.id,
            "login": user.login,
            "login_name": "",
            "source_id": 0,
            "full_name": "",
            "email": f"{user.key}@noreply.localhost",
            "avatar_url": f"{self.base_url}/avatars/{user.id}",
            "html_url": f"{self.base_url}/{user.login}",
            "language": "",
            "is_admin": user.admin,
            "last_login": rfc3339(user.created),
            "created": rfc3339(user.created),
            "restricted": False,
            "active": user.active,
            "prohibit_login": False,
            "location": "",
            "pronouns": "",
            "website": "",
            "description": "",
            "visibility": "public",
            "followers_count": 0,
            "following_count": 0,
            "starred_repos_count": 0,
        }

    def repo(self, repo: SimRepo, viewer: str | None = None) -> Json:
        issues = [i for i in self.state.issues.values() if i.repo == repo.key]
        data: Json = {
            "id": repo.id,
            "owner": self.user(repo.owner),
            "name": repo.name,
            "full_name": repo.full_name,
            "description": "",
            "empty": False,
            "private": repo.private,
            "fork": False,
            "template": False,
            "parent": None,
            "mirror": False,
            "size": 0,
            "language": "",
            "languages_url": f"{self.api}/repos/{repo.full_name}/languages",
            "html_url": f"{self.base_url}/{repo.full_name}",
            "url": f"{self.api}/repos/{repo.full_name}",
            "link": "",
            "ssh_url": "",
            "clone_url": f"{self.base_url}/{repo.full_name}.git",
            "original_url": "",
            "website": "",
            "stars_count": 0,
            "forks_count": 0,
            "watchers_count": len(repo.watchers),
            "open_issues_count": sum(1 for i in issues if not i.is_pull and i.state == "open"),
            "open_pr_counter": sum(1 for i in issues if i.is_pull and i.state == "open"),
            "release_counter": 0,
            "default_branch": repo.default_branch,
            "archived": False,
            "created_at": rfc3339(repo.created_at),
            "updated_at": rfc3339(repo.created_at),
            "archived_at": EPOCH,
            "has_issues": True,
            "has_wiki": False,
            "has_pull_requests": True,
            "has_projects": False,
            "has_releases": False,
            "has_packages": False,
            "has_actions": False,
            "ignore_whitespace_conflicts": False,
            "allow_merge_commits": True,
            "allow_rebase": True,
            "allow_rebase_explicit": True,
            "allow_squash_merge": True,
            "allow_fast_forward_only_merge": True,
            "allow_rebase_update": True,
            "default_delete_branch_after_merge": False,
            "default_merge_style": "merge",
            "default_allow_maintainer_edit": False,
            "avatar_url": "",
            "internal": False,
            "mirror_interval": "",
            "object_format_name": "sha1",
            "topics": [],
        }
        if viewer is not None:
            data["permissions"] = {
                "admin": has_access(self.state, repo, viewer, "admin"),
                "push": has_access(self.state, repo, viewer, "write"),
                "pull": has_access(self.state, repo, viewer, "read"),
            }
        return data

    def permission(self, repo: SimRepo, login: str) -> Json:
        level = access_level(self.state, repo, login)
        return {"permission": level, "role_name": level, "user": self.user(login)}

    def _issue_urls(self, issue: SimIssue) -> tuple[str, str]:
        repo = self.state.repos[issue.repo]
        kind = "pulls" if issue.is_pull else "issues"
        html = f"{self.base_url}/{repo.full_name}/{kind}/{issue.number}"
        return f"{self.api}/repos/{repo.full_name}/issues/{issue.number}", html

    def issue(self, issue: SimIssue) -> Json:
        repo = self.state.repos[issue.repo]
        api_url, html_url = self._issue_urls(issue)
        assignees = [self.user(a) for a in issue.assignees]
        pull = issue.pull
        return {
            "id": issue.id,
            "url": api_url,
            "html_url": html_url,
            "number": issue.number,
            "user": self.user(issue.user),
            "original_author": "",
            "original_author_id": 0,
            "title": issue.title,
            "body": issue.body,
            "ref": "",
            "assets": [],
            "labels": [],
            "milestone": None,
            "assignee": assignees[0] if assignees else None,
            "assignees": assignees or None,
            "state": issue.state,
            "is_locked": False,
            "comments": len(self.state.plain_comments(issue.repo, issue.number)),
            "created_at": rfc3339(issue.created_at),
            "updated_at": rfc3339(issue.updated_at),
            "closed_at": rfc3339(issue.closed_at),
            "due_date": None,
            "pin_order": 0,
            "pull_request": None
            if pull is None
            else {
                "merged": pull.merged,
                "merged_at": rfc3339(pull.merged_at),
                "draft": issue.draft,
                "html_url": html_url,
            },
            "repository": {
                "id": repo.id,
                "name": repo.name,
                "owner": repo.owner,
                "full_name": repo.full_name,
            },
        }

    def _branch(self, repo: SimRepo, ref: str, sha: str) -> Json:
        return {
            "label": ref,
            "ref": ref,
            "sha": sha,
            "repo_id": repo.id,
            "repo": self.repo(repo),
        }

    def pull(self, issue: SimIssue) -> Json:
        pull = issue.pull
        assert pull is not None, "pull() needs a pull request"
        repo = self.state.repos[issue.repo]
        html_url = self._issue_urls(issue)[1]
        assignees = [self.user(a) for a in issue.assignees]
        base_sha = repo.branches.get(pull.base_ref, pull.merge_base)
        return {
            "id": issue.id,
            "url": f"{self.api}/repos/{repo.full_name}/pulls/{issue.number}",
            "number": issue.number,
            "user": self.user(issue.user),
            "title": issue.title,
            "body": issue.body,
            "labels": [],
            "milestone": None,
            "assignee": assignees[0] if assignees else None,
            "assignees": assignees or None,
            "requested_reviewers": [
                self.user(login) for login in self.state.requested_reviewers(issue)
            ],
            "requested_reviewers_teams": [],
            "state": issue.state,
            "draft": issue.draft,
            "is_locked": False,
            "comments": len(self.state.plain_comments(issue.repo, issue.number)),
            "review_comments": sum(
                1
                for c in self.state.review_comments.values()
                if c.repo == issue.repo and c.number == issue.number
            ),
            "additions": 0,
            "deletions": 0,
            "changed_files": 0,
            "html_url": html_url,
            "diff_url": f"{html_url}.diff",
            "patch_url": f"{html_url}.patch",
            "mergeable": pull.mergeable and not pull.merged and issue.state == "open",
            "merged": pull.merged,
            "merged_at": rfc3339(pull.merged_at),
            "merge_commit_sha": pull.merge_commit_sha or None,
            "merged_by": self.user(pull.merged_by) if pull.merged_by else None,
            "allow_maintainer_edit": False,
            "base": self._branch(repo, pull.base_ref, base_sha),
            "head": self._branch(repo, pull.head_ref, pull.head_sha),
            "merge_base": pull.merge_base,
            "due_date": None,
            "created_at": rfc3339(issue.created_at),
            "updated_at": rfc3339(issue.updated_at),
            "closed_at": rfc3339(issue.closed_at),
            "pin_order": 0,
            "flow": 0,
        }

    def comment(self, comment: SimComment) -> Json:
        issue = self.state.issue(comment.repo, comment.number)
        html_issue = self._issue_urls(issue)[1]
        return {
            "id": comment.id,
            "html_url": f"{html_issue}#issuecomment-{comment.id}",
            "pull_request_url": html_issue if issue.is_pull else "",
            "issue_url": "" if issue.is_pull else html_issue,
            "user": self.user(comment.user),
            "original_author": "",
            "original_author_id": 0,
            "body": comment.body,
            "assets": [],
            "created_at": rfc3339(comment.created_at),
            "updated_at": rfc3339(comment.updated_at),
        }

    def timeline_item(self, item: SimComment) -> Json:
        data = self.comment(item)
        data.pop("assets")
        data.pop("original_author")
        data.pop("original_author_id")
        data["type"] = item.type
        data["assignee"] = self.user(item.assignee) if item.assignee else None
        data["removed_assignee"] = item.removed_assignee
        data["review_id"] = item.review_id
        return data

    def reaction(self, reaction: SimReaction) -> Json:
        return {
            "user": self.user(reaction.user),
            "content": reaction.content,
            "created_at": rfc3339(reaction.created_at),
        }

    def review(self, review: SimReview) -> Json:
        issue = self.state.issue(review.repo, review.number)
        html_url = self._issue_urls(issue)[1]
        return {
            "id": review.id,
            "user": self.user(review.user),
            "team": None,
            "state": review.state,
            "body": review.body,
            "commit_id": review.commit_id,
            "stale": review.stale,
            "official": review.official,
            "dismissed": review.dismissed,
            "comments_count": len(review.comment_ids),
            "submitted_at": rfc3339(review.submitted_at),
            "updated_at": rfc3339(review.updated_at),
            "html_url": f"{html_url}#issuecomment-{review.id}",
            "pull_request_url": html_url,
        }

    def commit_status(self, status: SimStatus) -> Json:
        """services/convert/status.go ToCommitStatus: the state goes out as "status"."""
        repo = self.state.repos[status.repo]
        return {
            "id": status.index,
            "status": status.state,
            "target_url": status.target_url,
            "description": status.description,
            "url": f"{self.api}/repos/{repo.full_name}/statuses/{status.sha}",
            "context": status.context,
            "creator": self.user(status.creator),
            "created_at": rfc3339(status.created_at),
            "updated_at": rfc3339(status.created_at),  # Forgejo sends the creation time twice
        }

    def combined_status(
        self, repo: SimRepo, statuses: list[SimStatus], viewer: str | None = None
    ) -> Json:
        """ToCombinedStatus: the worst state ("error" reads "failure"); with no statuses
        Forgejo answers an empty CombinedStatus (state "", statuses null)."""
        if not statuses:
            return {
                "state": "", "sha": "", "total_count": 0, "statuses": None,
                "repository": None, "commit_url": "", "url": "",
            }  # fmt: skip
        state = worst_state(s.state for s in statuses)
        return {
            "state": "failure" if state == "error" else state,
            "sha": statuses[0].sha,
            "total_count": len(statuses),
            "statuses": [self.commit_status(s) for s in statuses],
            "repository": self.repo(repo, viewer=viewer),
            "commit_url": "",
            "url": "",
        }

    def review_comment(self, comment: SimReviewComment) -> Json:
        issue = self.state.issue(comment.repo, comment.number)
        html_url = self._issue_urls(issue)[1]
        return {
            "id": comment.id,
            "body": comment.body,
            "user": self.user(comment.user),
            "resolver": None,
            "pull_request_review_id": comment.review_id,
            "created_at": rfc3339(comment.created_at),
            "updated_at": rfc3339(comment.updated_at),
            "path": comment.path,
            "commit_id": comment.commit_id,
            "original_commit_id": comment.commit_id,
            "diff_hunk": "",
            "position": comment.new_position,
            "original_position": comment.old_position,
            "extra_lines_count": 0,
            "html_url": f"{html_url}/files#issuecomment-{comment.id}",
            "pull_request_url": html_url,
        }

    def thread(self, thread: SimThread) -> Json:
        issue = self.state.issue(thread.repo, thread.number)
        repo = self.state.repos[issue.repo]
        api_url, html_url = self._issue_urls(issue)
        if issue.is_pull:
            api_url = f"{self.api}/repos/{repo.full_name}/pulls/{issue.number}"
        comments = self.state.plain_comments(issue.repo, issue.number)
        latest = comments[-1] if comments else None
        merged = issue.pull is not None and issue.pull.merged
        return {
            "id": thread.id,
            "repository": self.repo(repo),
            "subject": {
                "title": issue.title,
                "url": api_url,
                "html_url": html_url,
                "latest_comment_url": ""
                if latest is None
                else f"{self.api}/repos/{repo.full_name}/issues/comments/{latest.id}",
                "latest_comment_html_url": ""
                if latest is None
                else f"{html_url}#issuecomment-{latest.id}",
                "type": "Pull" if issue.is_pull else "Issue",
                "state": "merged" if merged else issue.state,
            },
            "unread": thread.status == "unread",
            "pinned": thread.status == "pinned",
            "updated_at": rfc3339(thread.updated_at),
            "url": f"{self.api}/notifications/threads/{thread.id}",
        }

    # -- webhook payloads (modules/structs/hook.go) ----------------------------------------

    def issue_payload(self, action: str, issue: SimIssue, sender: str) -> Json:
        return {
            "action": action,
            "number": issue.number,
            "issue": self.issue(issue),
            "repository": self.repo(self.state.repos[issue.repo]),
            "sender": self.user(sender),
        }

    def pull_payload(self, action: str, issue: SimIssue, sender: str) -> Json:
        """PullRequestPayload: requested_reviewer, commit_id and review are always
        there (no omitempty), null or "" when the event has none."""
        return {
            "action": action,
            "number": issue.number,
            "pull_request": self.pull(issue),
            "requested_reviewer": None,
            "repository": self.repo(self.state.repos[issue.repo]),
            "sender": self.user(sender),
            "commit_id": "",
            "review": None,
        }

    def comment_payload(
        self, action: str, comment: SimComment, sender: str, body_before: str | None
    ) -> Json:
        issue = self.state.issue(comment.repo, comment.number)
        payload: Json = {
            "action": action,
            "issue": self.issue(issue),
            "comment": self.comment(comment),
            "repository": self.repo(self.state.repos[issue.repo]),
            "sender": self.user(sender),
            "is_pull": issue.is_pull,
        }
        if issue.is_pull:
            payload["pull_request"] = self.pull(issue)
        if body_before is not None:
            payload["changes"] = {"body": {"from": body_before}}
        return payload
