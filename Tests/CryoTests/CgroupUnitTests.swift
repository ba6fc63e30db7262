// Pure parts of cgroup handling, without root: --cgroup-root values, where a
// dumped cgroup goes at restore, and which mount holds which hierarchy.

@testable import Cryo
import Testing

@Suite("cgroup paths (unit)")
struct CgroupUnitTests {
    @Test("--cgroup-root values: [controllers:]/path, trailing slash dropped; others refused")
    func roots() throws {
        let roots = try CgroupRestore.parseRoots(["pids:/a", "/b", "name=systemd:/c/", "cpu,cpuacct:/"])
        #expect(roots == ["pids": "/a", "": "/b", "name=systemd": "/c", "cpu,cpuacct": "/"])
        for bad in ["x", "pids:x", "pids:/a/../b", ""] {
            #expect(throws: CryoError.self, "\(bad)") { try CgroupRestore.parseRoots([bad]) }
        }
    }

    @Test("a dumped path maps under --cgroup-root, cryo's own cgroup to the restoring cryo's, others unchanged")
    func targets() throws {
        let h = CgroupRecord.Hierarchy(controllers: "pids", dumper: "/", root: "/web", members: [], cgroups: [])
        let record = CgroupRecord(hierarchies: [h])
        let moved = CgroupRestore(record, mode: .soft, roots: ["pids": "/moved"])
        #expect(moved.target("/web", in: h, own: "/x") == "/moved")
        #expect(moved.target("/web/a", in: h, own: "/x") == "/moved/a")
        #expect(moved.target("/webserver", in: h, own: "/x") == "/webserver")
        #expect(moved.target("/", in: h, own: "/x") == "/x")
        let plain = CgroupRestore(record, mode: .soft, roots: [:])
        #expect(plain.target("/web/a", in: h, own: "/x") == "/web/a")
        let other = CgroupRestore(record, mode: .soft, roots: ["cpu": "/elsewhere"])
        #expect(other.target("/web", in: h, own: "/x") == "/web")
        let all = CgroupRestore(record, mode: .soft, roots: ["": "/all"])
        #expect(all.target("/web/b", in: h, own: "/x") == "/all/b")
    }

    @Test("mountinfo: v2, v1 controllers, named and joint hierarchies; bind mounts of a subtree skipped")
    func mounts() {
        let sample = """
        30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
        31 25 0:27 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
        32 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
        33 25 0:29 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
        34 25 0:29 /sub /mnt/pids-sub rw - cgroup cgroup rw,pids
        35 25 8:1 / / rw - ext4 /dev/sda1 rw
        """
        let mounts = CgroupMounts.parse(sample)
        #expect(mounts[""] == "/sys/fs/cgroup/unified")
        #expect(mounts["name=systemd"] == "/sys/fs/cgroup/systemd")
        #expect(mounts["cpu,cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct")
        #expect(mounts["pids"] == "/sys/fs/cgroup/pids")
        #expect(mounts.count == 4, "\(mounts)")
    }

    @Test("a hierarchy cryo mounts itself gets the options naming it; one with only a name needs \"none\"")
    func mountOptions() {
        #expect(CgroupMounts.mountOptions("name=zdtmtst") == "none,name=zdtmtst")
        #expect(CgroupMounts.mountOptions("cpu,cpuacct") == "cpu,cpuacct")
        #expect(CgroupMounts.mountOptions("pids,name=x") == "pids,name=x")
    }
}
